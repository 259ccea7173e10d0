//! The status function: placeholder until the serverless issue.
