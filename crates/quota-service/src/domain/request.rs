//! What callers send to name a debit or a page: request ids and page tokens.

use super::QuotaError;

/// The longest `request_id` the ledger keeps, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 255;

/// A caller's idempotency key for a debit: any text of 1 to
/// [`MAX_REQUEST_ID_LEN`] bytes without a NUL character (which PostgreSQL
/// cannot store in text), compared exactly (case and spaces count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestId<'a>(&'a str);

impl<'a> RequestId<'a> {
    /// `None` for an empty id (the debit is then not idempotent); an id
    /// longer than the ledger keeps, or with a NUL in it, is refused.
    pub fn parse(id: &'a str) -> Result<Option<RequestId<'a>>, QuotaError> {
        if id.len() > MAX_REQUEST_ID_LEN {
            return Err(QuotaError::InvalidArgument(format!(
                "request_id is longer than {MAX_REQUEST_ID_LEN} bytes"
            )));
        }
        no_nul("request_id", id)?;
        Ok(Some(RequestId(id)).filter(|id| !id.0.is_empty()))
    }

    /// The id as sent.
    pub fn as_str(self) -> &'a str {
        self.0
    }
}

/// Refuses text with a NUL character: PostgreSQL cannot store one in a text
/// column, and it is the same mistake on every database.
pub fn no_nul(field: &str, text: &str) -> Result<(), QuotaError> {
    if text.contains('\0') {
        return Err(QuotaError::InvalidArgument(format!(
            "{field} contains a NUL character"
        )));
    }
    Ok(())
}

/// A character a token name may not hold, as a terminal would act on it
/// rather than show it: a control character (a newline, a tab, an escape)
/// or a bidirectional formatting one, which reorders what follows it
/// (U+202E and its kin).
pub fn acts_on_a_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Where a page of tokens starts: after the token with this id. The token
/// of the first page is empty; the next page's is the last id shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageToken(i64);

impl PageToken {
    /// The first page.
    pub const FIRST: PageToken = PageToken(0);

    /// The page after the token with id `last_id`.
    pub fn after(last_id: i64) -> PageToken {
        PageToken(last_id)
    }

    /// An empty token is the first page; anything but a token this server
    /// gave (a positive id in plain decimal, as [`PageToken::encode`] writes
    /// it) is refused.
    pub fn parse(token: &str) -> Result<PageToken, QuotaError> {
        if token.is_empty() {
            return Ok(PageToken::FIRST);
        }
        match token.parse::<i64>() {
            Ok(id) if id > 0 && id.to_string() == token => Ok(PageToken(id)),
            _ => Err(QuotaError::InvalidArgument(
                "page_token is not one this server gave".into(),
            )),
        }
    }

    /// The id the page starts after.
    pub fn after_id(self) -> i64 {
        self.0
    }

    /// The token as sent to a client: empty for the first page.
    pub fn encode(self) -> String {
        if self == PageToken::FIRST {
            String::new()
        } else {
            self.0.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_optional_and_bounded() {
        assert_eq!(RequestId::parse("").unwrap(), None);
        assert_eq!(
            RequestId::parse(" a B ").unwrap().unwrap().as_str(),
            " a B "
        );
        assert!(RequestId::parse(&"x".repeat(255)).unwrap().is_some());
        assert!(RequestId::parse(&"x".repeat(256)).is_err());
        assert!(RequestId::parse(&"é".repeat(128)).is_err());
        for nul in ["\0", "a\0b", "ab\0"] {
            assert!(RequestId::parse(nul).is_err(), "{nul:?}");
        }
    }

    #[test]
    fn page_tokens_round_trip() {
        assert_eq!(PageToken::parse("").unwrap(), PageToken::FIRST);
        assert_eq!(PageToken::parse("42").unwrap().after_id(), 42);
        assert_eq!(PageToken::after(42).encode(), "42");
        assert_eq!(PageToken::FIRST.encode(), "");
        for bad in [
            "x",
            "4 2",
            "1.5",
            "99999999999999999999",
            "-1",
            "0",
            "+5",
            "042",
        ] {
            assert!(PageToken::parse(bad).is_err(), "{bad:?}");
        }
    }
}
