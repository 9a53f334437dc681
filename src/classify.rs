//! Which budget a request draws from.
//!
//! RetailCRM limits telephony methods separately (40/s) from everything else
//! (10/s). This module owns that decision and nothing else: it never looks at
//! keys, tenants or bodies, only at the path under `/api/`.

use std::fmt;

use serde::Serialize;

/// The rate-limit class of a CRM method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Every method that is not telephony: 10 requests per second per IP.
    General,
    /// `/api/telephony/*` and `/api/v{N}/telephony/*`: 40 per second per IP.
    Telephony,
}

impl Class {
    /// Both classes, in a stable order (for metrics and status output).
    pub const ALL: [Class; 2] = [Class::General, Class::Telephony];

    /// Its place in [`Class::ALL`] (for per-class arrays).
    pub fn index(self) -> usize {
        match self {
            Class::General => 0,
            Class::Telephony => 1,
        }
    }

    /// The label used in metrics, logs and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::General => "general",
            Class::Telephony => "telephony",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies a path that starts at `/api/` (the tenant prefix already removed).
///
/// Telephony is `/api/telephony/...` or `/api/v{digits}/telephony/...`;
/// everything else, including malformed paths, is general, which is the
/// stricter budget and so the safe default.
pub fn classify(api_path: &str) -> Class {
    let Some(rest) = api_path.strip_prefix("/api/") else {
        return Class::General;
    };
    let rest = match rest.split_once('/') {
        Some((version, tail))
            if version.len() > 1
                && version.starts_with('v')
                && version[1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            tail
        }
        _ => rest,
    };
    // The bare group (`/api/v5/telephony`) is no telephony method: the CRM
    // counts it as general.
    if rest.starts_with("telephony/") {
        Class::Telephony
    } else {
        Class::General
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telephony_paths_in_every_spelling() {
        assert_eq!(classify("/api/telephony/call/event"), Class::Telephony);
        assert_eq!(classify("/api/v5/telephony/call/event"), Class::Telephony);
        assert_eq!(classify("/api/v4/telephony/manager"), Class::Telephony);
        assert_eq!(classify("/api/v5/telephony/calls/upload"), Class::Telephony);
    }

    #[test]
    fn everything_else_is_general() {
        assert_eq!(classify("/api/v5/orders"), Class::General);
        assert_eq!(classify("/api/v5/orders/telephony"), Class::General);
        assert_eq!(classify("/api/api-versions"), Class::General);
        assert_eq!(classify("/api/credentials"), Class::General);
        assert_eq!(classify("/api/v5/telephonyx/a"), Class::General);
        assert_eq!(classify("/api/v5/telephony"), Class::General);
        assert_eq!(classify("/api/telephony"), Class::General);
        assert_eq!(classify("/api/vx/telephony/a"), Class::General);
        assert_eq!(classify("/other"), Class::General);
    }
}
