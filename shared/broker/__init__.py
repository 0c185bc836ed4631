"""Redis and Dramatiq: the broker and the queue the processes share."""
