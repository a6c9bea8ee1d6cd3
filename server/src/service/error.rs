//! Every refusal the service can give. The HTTP layer renders each as
//! `{"error": code, "message": text}` with a status chosen from its [`Refusal`] kind.

use webfl_shared::coordinator::RoundError;
use webfl_shared::secagg::ServerError;

/// What kind of refusal an error is; the API maps each to one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed request (400).
    BadRequest,
    /// No credentials, or credentials for an unknown client (401).
    Unauthorized,
    /// Credentials of another client, or not selected (403).
    Forbidden,
    NotFound,
    /// Does not fit the open round (409).
    Conflict,
    /// A body that did not arrive in time (408).
    TimedOut,
    /// Body over the limit (413).
    TooLarge,
    /// Well-formed but not an acceptable update (422).
    Unprocessable,
    /// Over a rate limit (429, with `Retry-After`).
    TooManyRequests,
    /// The server's own failure (500).
    Internal,
    /// Too busy now; come back after `Retry-After` (503).
    Unavailable,
}

impl Refusal {
    /// The HTTP status a refusal of this kind is answered with (`webfl serve`, and the refusals
    /// `webfl simulate` hands its clients).
    pub fn http_status(self) -> u16 {
        match self {
            Refusal::BadRequest => 400,
            Refusal::Unauthorized => 401,
            Refusal::Forbidden => 403,
            Refusal::NotFound => 404,
            Refusal::Conflict => 409,
            Refusal::TimedOut => 408,
            Refusal::TooLarge => 413,
            Refusal::Unprocessable => 422,
            Refusal::TooManyRequests => 429,
            Refusal::Internal => 500,
            Refusal::Unavailable => 503,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the request body exceeds the limit of {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(f64),
    #[error("{0}")]
    BadUpdate(String),
    #[error(transparent)]
    Round(#[from] RoundError),
    #[error("{message}")]
    RateLimited { retry_after_ms: u64, message: String },
    #[error("{message}")]
    Overloaded { retry_after_ms: u64, message: String },
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ServiceError::BadRequest { code, message: message.into() }
    }

    /// The refusal as the protocol's JSON body.
    /// How long the client should stay away, for refusals that say (`Retry-After`).
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            ServiceError::RateLimited { retry_after_ms, .. } | ServiceError::Overloaded { retry_after_ms, .. } => {
                Some(*retry_after_ms)
            }
            _ => None,
        }
    }

    pub fn body(&self) -> webfl_shared::protocol::ErrorBody {
        webfl_shared::protocol::ErrorBody { error: self.code().to_string(), message: self.to_string() }
    }

    pub fn refusal(&self) -> Refusal {
        match self {
            ServiceError::BadRequest { .. } => Refusal::BadRequest,
            ServiceError::Unauthorized(_) => Refusal::Unauthorized,
            ServiceError::Forbidden(_) => Refusal::Forbidden,
            ServiceError::NotFound(_) => Refusal::NotFound,
            ServiceError::TooLarge(_) => Refusal::TooLarge,
            ServiceError::BodyTimeout(_) => Refusal::TimedOut,
            ServiceError::BadUpdate(_) => Refusal::Unprocessable,
            ServiceError::Round(e) => match e {
                RoundError::NotSelected(_) => Refusal::Forbidden,
                RoundError::AlreadyReported(_)
                | RoundError::WrongRound { .. }
                | RoundError::WrongModelVersion { .. }
                | RoundError::NoOpenRound
                | RoundError::DeadlinePassed(_)
                | RoundError::SecureRound(_)
                | RoundError::NotSecureRound(_)
                | RoundError::CohortNotFixed(_)
                | RoundError::SecAggRefused(ServerError::OutOfStage { .. } | ServerError::AlreadyReceived(_)) => {
                    Refusal::Conflict
                }
                RoundError::SecAggRefused(_) => Refusal::Unprocessable,
                RoundError::BadUpdate(_)
                | RoundError::NoExamples
                | RoundError::TooManyExamples { .. }
                | RoundError::OutOfRange { .. } => Refusal::Unprocessable,
                RoundError::BadPolicy(_) | RoundError::BadSecAgg(_) | RoundError::NothingToCommit => Refusal::Internal,
            },
            ServiceError::RateLimited { .. } => Refusal::TooManyRequests,
            ServiceError::Overloaded { .. } => Refusal::Unavailable,
            ServiceError::Internal(_) => Refusal::Internal,
        }
    }

    /// The machine-readable `error` field (also the `reason` label of rejected-update metrics).
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::BadRequest { code, .. } => code,
            ServiceError::Unauthorized(_) => "unauthorized",
            ServiceError::Forbidden(_) => "forbidden",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::TooLarge(_) => "payload_too_large",
            ServiceError::BodyTimeout(_) => "body_timeout",
            ServiceError::BadUpdate(_) => "bad_update",
            ServiceError::Round(e) => match e {
                RoundError::BadPolicy(_) | RoundError::BadSecAgg(_) | RoundError::NothingToCommit => "internal",
                RoundError::SecureRound(_) => "secure_round",
                RoundError::NotSecureRound(_) => "not_secure_round",
                RoundError::CohortNotFixed(_) => "cohort_not_fixed",
                RoundError::SecAggRefused(ServerError::OutOfStage { .. }) => "out_of_stage",
                RoundError::SecAggRefused(ServerError::AlreadyReceived(_)) => "already_received",
                RoundError::SecAggRefused(_) => "bad_secagg_message",
                RoundError::NoOpenRound => "no_open_round",
                RoundError::WrongRound { .. } => "wrong_round",
                RoundError::WrongModelVersion { .. } => "wrong_model_version",
                RoundError::NotSelected(_) => "not_selected",
                RoundError::AlreadyReported(_) => "already_reported",
                RoundError::DeadlinePassed(_) => "deadline_passed",
                RoundError::NoExamples => "no_examples",
                RoundError::TooManyExamples { .. } => "too_many_examples",
                RoundError::OutOfRange { .. } => "out_of_range",
                RoundError::BadUpdate(_) => "bad_update",
            },
            ServiceError::RateLimited { .. } => "rate_limited",
            ServiceError::Overloaded { .. } => "overloaded",
            ServiceError::Internal(_) => "internal",
        }
    }
}
