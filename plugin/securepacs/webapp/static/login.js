// Login: password, then the TOTP code when the account has one; back to the deep link afterwards.
const params = new URLSearchParams(location.search);
const ID = "[0-9a-f]{8}(?:-[0-9a-f]{8}){4}";
const SAFE_NEXT = new RegExp(`^(?:/list|/(?:study|view)/${ID})$`);
const next = SAFE_NEXT.test(params.get("next") || "") ? params.get("next") : "/list";
const REASONS = {
  logout: "You are logged out.",
  idle: "You were logged out after 15 minutes without activity.",
  expired: "Your session has ended. Please log in again.",
};

function say(text, isError) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.className = isError ? "error" : "notice";
}

async function alreadyLoggedIn() {
  // SameSite=Strict: a link from another site arrives without the cookie; same-origin, it is sent again.
  const me = await fetch("/securepacs/api/me", { credentials: "same-origin", headers: { "X-Requested-With": "SecurePACS" } });
  if (me.ok) location.replace(next);
}

async function submit(event) {
  event.preventDefault();
  const body = { username: document.getElementById("username").value, password: document.getElementById("password").value };
  const code = document.getElementById("totp").value.trim();
  if (code) body.totp = code;
  const button = document.getElementById("submit");
  button.disabled = true;
  try {
    const response = await fetch("/securepacs/login", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Requested-With": "SecurePACS" }, body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    if (response.ok) { location.replace(next); return; }
    if (answer.totp_required) {
      document.getElementById("totp-field").hidden = false;
      document.getElementById("totp").focus();
      say("Enter the 6-digit code from your authenticator app.", false);
      return;
    }
    say(answer.error || `Login failed (${response.status}).`, true);
  } catch {
    say("The archive cannot be reached. Check the connection and try again.", true);
  } finally {
    button.disabled = false;
  }
}

document.getElementById("login-form").addEventListener("submit", submit);
if (REASONS[params.get("reason")]) say(REASONS[params.get("reason")], false);
alreadyLoggedIn();
document.getElementById("username").focus();
