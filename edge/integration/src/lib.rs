//! edge-integration
