//! Shared helpers of Portway's integration and end-to-end tests.
