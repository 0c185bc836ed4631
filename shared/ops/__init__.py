"""What operators read and act on: dead letters and the last hour's activity."""
