//! The Portway node agent.
