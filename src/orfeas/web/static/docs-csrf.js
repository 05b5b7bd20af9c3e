// Swagger UI's "Try it out" sends its requests with fetch; a signed-in studio session must send its CSRF token
// with state-changing requests (docs/SECURITY.md), so this adds it from the orfeas_csrf cookie, as the studio does.
(() => {
  const token = () => {
    const match = document.cookie.match(/(?:^|; )orfeas_csrf=([^;]*)/);
    return match ? decodeURIComponent(match[1]) : null;
  };
  const original = window.fetch.bind(window);
  window.fetch = (input, init = {}) => {
    const method = (init.method || (input instanceof Request ? input.method : "GET")).toUpperCase();
    const csrf = token();
    if (csrf && !["GET", "HEAD", "OPTIONS"].includes(method)) {
      const headers = new Headers(init.headers || (input instanceof Request ? input.headers : undefined));
      headers.set("X-CSRF-Token", csrf);
      init = { ...init, headers };
    }
    return original(input, init);
  };
})();
