//! Secrets out of error texts. A sink may answer "you sent: Bearer …"; the error text built from
//! that answer is logged and stored (`last_error`), so every secret a request carried is replaced
//! with `***` right where the text is made, before anything else sees it.

/// The secrets one request carried, in every form it sent them.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    secrets: Vec<String>,
}

/// What a secret becomes in a redacted text.
pub const REDACTED: &str = "***";

impl Redactor {
    /// Also redact `secret` (an empty one is ignored: there is nothing to hide).
    pub fn with(mut self, secret: impl Into<String>) -> Redactor {
        let secret = secret.into();
        if !secret.is_empty() && !self.secrets.contains(&secret) {
            self.secrets.push(secret);
            // Longest first, so a header value is replaced whole before the token inside it.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
        self
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_every_secret_is_replaced() {
        let redactor = Redactor::default()
            .with("s3cret")
            .with("Bearer s3cret")
            .with("")
            .with("dXNlcjpzM2NyZXQ=");
        assert_eq!(
            redactor.redact(
                "you sent: Bearer s3cret; again s3cret; basic dXNlcjpzM2NyZXQ=; no secret here"
            ),
            "you sent: ***; again ***; basic ***; no secret here"
        );
        assert_eq!(Redactor::default().redact("as is"), "as is");
    }
}
