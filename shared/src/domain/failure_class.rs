//! Why rows fail, in a few classes a person can act on: the report groups failures by class and the
//! metrics count them by class. One rule, read off the reason a failure carries.

/// The class of a failure reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureClass {
    /// The provider refused the request (content policy, invalid parameter, no image in its answer).
    Refused,
    RateLimited,
    /// The provider answered 5xx, was overloaded or unreachable.
    ProviderDown,
    /// The provider's answer was not a PNG, JPEG or WebP image.
    NotAnImage,
    TimedOut,
    /// The provider refused the credentials; the run stopped calling it.
    Credentials,
    Other,
}

impl FailureClass {
    /// Every class, in the order the report lists them.
    pub const ALL: [FailureClass; 7] = [
        Self::Refused,
        Self::RateLimited,
        Self::ProviderDown,
        Self::NotAnImage,
        Self::TimedOut,
        Self::Credentials,
        Self::Other,
    ];

    /// The class of a failure `reason` as the pipeline words it (see `ProviderError` and `NotAnImage`).
    pub fn of(reason: &str) -> Self {
        let reason = reason.to_ascii_lowercase();
        if reason.contains("credentials") {
            Self::Credentials
        } else if reason.contains("timed out") || reason.contains("timeout") {
            Self::TimedOut
        } else if reason.starts_with("rate limited") {
            Self::RateLimited
        } else if reason.starts_with("rejected by provider") {
            Self::Refused
        } else if reason.starts_with("provider unavailable") {
            Self::ProviderDown
        } else if reason.contains("not a png, jpeg or webp image") {
            Self::NotAnImage
        } else {
            Self::Other
        }
    }

    /// How the report names the class.
    pub fn label(self) -> &'static str {
        match self {
            Self::Refused => "refused by the provider",
            Self::RateLimited => "rate limited",
            Self::ProviderDown => "provider down",
            Self::NotAnImage => "not an image",
            Self::TimedOut => "timed out",
            Self::Credentials => "credentials refused",
            Self::Other => "other",
        }
    }

    /// A short identifier: the metrics' `reason` dimension value and the report's anchors.
    pub fn id(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::RateLimited => "rate_limited",
            Self::ProviderDown => "provider_down",
            Self::NotAnImage => "not_an_image",
            Self::TimedOut => "timed_out",
            Self::Credentials => "credentials",
            Self::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FailureClass::{self, *};
    use crate::domain::image_format;
    use crate::providers::ProviderError;

    fn class(error: ProviderError) -> FailureClass {
        FailureClass::of(&error.to_string())
    }

    #[test]
    fn provider_errors_fall_into_their_classes() {
        let message = "m".to_owned();
        assert_eq!(
            class(ProviderError::Rejected {
                message: message.clone()
            }),
            Refused
        );
        let limited = ProviderError::RateLimited {
            retry_after: None,
            message: message.clone(),
        };
        assert_eq!(class(limited), RateLimited);
        assert_eq!(
            class(ProviderError::Unavailable {
                message: message.clone()
            }),
            ProviderDown
        );
        assert_eq!(class(ProviderError::Unauthorized { message }), Credentials);
    }

    #[test]
    fn timeouts_not_images_and_stops_have_their_classes() {
        let slow = ProviderError::Unavailable {
            message: "https://api.example timed out".into(),
        };
        assert_eq!(class(slow), TimedOut);
        assert_eq!(
            FailureClass::of(&image_format::NotAnImage("an HTML page".into()).to_string()),
            NotAnImage
        );
        let stopped = "not attempted: the run stopped after the provider refused its credentials";
        assert_eq!(FailureClass::of(stopped), Credentials);
        assert_eq!(FailureClass::of("not attempted: the run was interrupted"), Other);
    }
}
