//! The submit function: placeholder until the serverless issue.
