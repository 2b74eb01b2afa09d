//! Keyset pagination, the listing's and the timeline's: a page is the rows after the sort key
//! of the previous page's last one, which the client gets back as an opaque cursor.

use time::OffsetDateTime;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

use crate::error::IngestError;

/// The sort key of the last row shown: a time in microseconds and an id, written
/// `<micros>_<uuid>`. Read strictly: what the document's pattern admits, and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cursor {
    pub(super) at: OffsetDateTime,
    pub(super) id: Uuid,
}

impl Cursor {
    /// The most digits of the microseconds (year 2286 and before).
    const MAX_DIGITS: usize = 16;

    pub(super) fn encode(self) -> String {
        format!("{}_{}", self.at.unix_timestamp_nanos() / 1_000, self.id)
    }

    pub(super) fn decode(text: &str) -> Result<Self, IngestError> {
        let invalid = || IngestError::InvalidQuery("cursor is not one this API gave out".into());
        let (micros, id_text) = text.split_once('_').ok_or_else(invalid)?;
        let digits = micros.strip_prefix('-').unwrap_or(micros);
        if digits.is_empty()
            || digits.len() > Self::MAX_DIGITS
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(invalid());
        }
        let micros: i128 = micros.parse().map_err(|_| invalid())?;
        let at =
            OffsetDateTime::from_unix_timestamp_nanos(micros * 1_000).map_err(|_| invalid())?;
        let id = Uuid::try_parse(id_text).map_err(|_| invalid())?;
        // Only the lowercase hyphenated form the pattern states (`try_parse` takes others).
        if id.hyphenated().to_string() != id_text {
            return Err(invalid());
        }
        Ok(Self { at, id })
    }
}

/// The `cursor` parameter as the document states it, the form [`Cursor::decode`] reads.
impl PartialSchema for Cursor {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(
                r"^-?[0-9]{1,16}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
            ))
            .min_length(Some(38))
            .max_length(Some(54))
            .into()
    }
}

impl ToSchema for Cursor {}

/// A listing's page sizes: `default` rows unless the request asks for 1 to `max`.
#[derive(Debug, Clone, Copy)]
pub(super) struct PageSize {
    pub(super) default: i64,
    pub(super) max: i64,
}

impl PageSize {
    /// The page a request's `limit` and `cursor` ask for; 400 `invalid-query` for a limit out
    /// of range (checked first) or a cursor this API did not give out.
    pub(super) fn request(
        self,
        limit: Option<i64>,
        cursor: Option<&str>,
    ) -> Result<PageRequest, IngestError> {
        let limit = limit.unwrap_or(self.default);
        if !(1..=self.max).contains(&limit) {
            return Err(IngestError::InvalidQuery(format!(
                "limit must be 1..={}",
                self.max
            )));
        }
        let after = cursor.map(Cursor::decode).transpose()?;
        Ok(PageRequest { limit, after })
    }
}

/// How many rows a page holds, and after which.
#[derive(Debug, Clone, Copy)]
pub(super) struct PageRequest {
    limit: i64,
    after: Option<Cursor>,
}

impl PageRequest {
    /// The sort key to start after, as the queries take it.
    pub(super) fn after(self) -> Option<(OffsetDateTime, Uuid)> {
        self.after.map(|cursor| (cursor.at, cursor.id))
    }

    /// How many rows to fetch: one more than the page, to tell whether another follows.
    pub(super) fn fetch(self) -> i64 {
        self.limit + 1
    }

    /// The fetched rows cut to the page, and the next page's cursor when another follows.
    pub(super) fn page<T>(
        self,
        mut rows: Vec<T>,
        sort_key: impl Fn(&T) -> Cursor,
    ) -> (Vec<T>, Option<String>) {
        let page = usize::try_from(self.limit).unwrap_or(usize::MAX);
        if rows.len() <= page {
            return (rows, None);
        }
        rows.truncate(page);
        let next = rows.last().map(|last| sort_key(last).encode());
        (rows, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_forgeries() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_000).unwrap();
        let id = Uuid::now_v7();
        let cursor = Cursor { at, id };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        for bad in [
            String::new(),
            "!!!".into(),
            "12:nope".into(),
            format!("_{id}"),
            format!("+12_{id}"),
            format!("12_{}", id.simple()),
            format!("12_{}", id.to_string().to_uppercase()),
            format!("12_{id}\n"),
            format!("12345678901234567_{id}"),
        ] {
            assert!(Cursor::decode(&bad).is_err(), "{bad}");
        }
    }

    fn cursor(n: i64) -> Cursor {
        Cursor {
            at: OffsetDateTime::from_unix_timestamp(n).unwrap(),
            id: Uuid::from_u128(n as u128),
        }
    }

    #[test]
    fn a_page_is_cut_to_its_limit_and_says_where_the_next_starts() {
        let size = PageSize { default: 2, max: 3 };
        let request = size.request(None, None).unwrap();
        assert_eq!((request.fetch(), request.after()), (3, None));
        let (rows, next) = request.page(vec![1, 2, 3], |n| cursor(*n));
        assert_eq!(rows, vec![1, 2]);
        assert_eq!(next, Some(cursor(2).encode()));
        let (rows, next) = request.page(vec![1, 2], |n| cursor(*n));
        assert_eq!((rows, next), (vec![1, 2], None), "the last page");

        let request = size.request(Some(3), Some(&cursor(7).encode())).unwrap();
        assert_eq!(request.fetch(), 4);
        assert_eq!(request.after(), Some((cursor(7).at, cursor(7).id)));
    }

    #[test]
    fn the_limit_is_checked_before_the_cursor() {
        let size = PageSize { default: 2, max: 3 };
        for limit in [0, 4, -1] {
            let error = size.request(Some(limit), Some("forged")).unwrap_err();
            assert_eq!(error.to_string(), "invalid query: limit must be 1..=3");
        }
        let error = size.request(Some(1), Some("forged")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid query: cursor is not one this API gave out"
        );
    }
}
