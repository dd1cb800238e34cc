//! Why a request is refused, and how each reason is answered.

/// One denial reason. Every variant maps to one `reason` code, status and challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    MissingToken,
    TokenTooLarge,
    MalformedToken,
    UnsupportedAlgorithm,
    AlgorithmNotAllowed,
    InvalidSignature,
    Expired,
    NotYetValid,
    InvalidIssuer,
    InvalidAudience,
    MissingClaim,
    UnknownKey,
    JwksUnavailable,
    PolicyMisconfigured,
}

impl Reject {
    /// The machine-readable `reason` of the denial.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Reject::MissingToken => "missing_token",
            Reject::TokenTooLarge => "token_too_large",
            Reject::MalformedToken => "malformed_token",
            Reject::UnsupportedAlgorithm => "unsupported_algorithm",
            Reject::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reject::InvalidSignature => "invalid_signature",
            Reject::Expired => "expired",
            Reject::NotYetValid => "not_yet_valid",
            Reject::InvalidIssuer => "invalid_issuer",
            Reject::InvalidAudience => "invalid_audience",
            Reject::MissingClaim => "missing_claim",
            Reject::UnknownKey => "unknown_key",
            Reject::JwksUnavailable => "jwks_unavailable",
            Reject::PolicyMisconfigured => "policy_misconfigured",
        }
    }

    /// 503 when the policy cannot judge the token at all, 401 otherwise.
    pub(crate) fn status(self) -> u16 {
        match self {
            Reject::JwksUnavailable | Reject::PolicyMisconfigured => 503,
            _ => 401,
        }
    }

    /// The `www-authenticate` challenge of a 401 (RFC 6750 §3).
    pub(crate) fn challenge(self) -> Option<&'static str> {
        match self {
            Reject::MissingToken => Some("Bearer"),
            _ if self.status() == 401 => Some("Bearer error=\"invalid_token\""),
            _ => None,
        }
    }
}
