// The login page says when the last attempt was refused (/console/login?failed=1).
const failed = new URLSearchParams(window.location.search).has("failed");
document.getElementById("login-error").hidden = !failed;
