// Progressive: without script the page is complete and every action works; with it, the
// live part refreshes itself every 5 s (not while a row is selected or a control is in
// use) and a change of the error type filter applies at once.
(function () {
  var pause = document.getElementById('pause'), stamp = document.getElementById('updated');
  var paused = false;
  pause.hidden = false;
  pause.addEventListener('click', function () {
    paused = !paused;
    pause.textContent = paused ? 'Resume updates' : 'Pause updates';
    pause.setAttribute('aria-pressed', String(paused));
  });
  document.querySelectorAll('select[data-autosubmit]').forEach(function (select) {
    select.addEventListener('change', function () { select.form.requestSubmit(); });
  });
  function busy(live) {
    var active = document.activeElement;
    return live.querySelector('input[type=checkbox]:checked') !== null ||
      (active && active !== document.body && live.contains(active) && active.matches('input, select, textarea'));
  }
  function refresh() {
    var live = document.getElementById('live');
    if (paused || document.hidden || busy(live)) return;
    fetch(location.href, {credentials: 'same-origin', headers: {'Accept': 'text/html'}})
      .then(function (response) {
        if (!response.ok || response.redirected) throw new Error(String(response.status));
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, 'text/html');
        var next = fresh.getElementById('live'), nextStamp = fresh.getElementById('updated');
        if (!next || busy(document.getElementById('live'))) return;
        document.getElementById('live').replaceWith(next);
        if (nextStamp) stamp.textContent = nextStamp.textContent;
      })
      .catch(function () { stamp.textContent = 'Not updated since ' + stamp.textContent.replace(/^(Updated|Not updated since) /, '') + ' (retrying)'; });
  }
  setInterval(refresh, 5000);
})();
