//! The benchmark harness (`tandem-bench`). Its subcommands arrive with the bench issue.
