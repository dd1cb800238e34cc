//! The disk tier of the edge cache: byte-bounded, crash-safe, checksummed, rebuilt from disk at start.
