//! The cluster manager. Its sans-IO core arrives with the cluster-manager issue.
