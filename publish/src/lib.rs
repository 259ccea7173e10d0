//! Publishing a run: git on the host side of the workspace (clone, the commit staged from
//! a link-safe walk of what the agent changed, push with a lease checked in the push's
//! own connection) and the forge (open or update the pull request).
//!
//! Architecture invariant: the forge token is used only here, inside git2's credentials
//! callback and octocrab's client. It never enters a URL, a git config, the container,
//! a log or a state object.

pub mod changes;
pub mod forge;
pub mod git;
