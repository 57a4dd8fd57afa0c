// Live calls: fetch the table every 2 s and swap it in.
(function () {
  var live = document.getElementById("live");
  if (!live) return;
  setInterval(function () {
    fetch(live.dataset.src, {credentials: "same-origin"}).then(function (r) {
      return r.ok ? r.text() : null;
    }).then(function (t) {
      if (t !== null) live.innerHTML = t;
    }).catch(function () {});
  }, 2000);
})();
