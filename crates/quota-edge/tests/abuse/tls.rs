//! REST over TLS.
