// The sign-in page: posts the name and password, then goes to the studio (or the page that sent us here).

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");

function destination() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  // only a path on this site: never "//other.example" or "https://..."
  return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") ? next : "/";
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  const button = document.getElementById("login-submit");
  button.disabled = true;
  try {
    const response = await fetch("/api/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: form.elements.name.value, password: form.elements.password.value }),
    });
    if (response.ok) {
      location.assign(destination());
      return;
    }
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json())?.error?.message || message;
    } catch {
      // not JSON: keep the status line
    }
    error.textContent = message;
    error.hidden = false;
    form.elements.password.select();
  } catch (err) {
    error.textContent = `Server unreachable (${err.message})`;
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
});
