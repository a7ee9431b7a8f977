//! Channel introspection: `GET /channels/<name>` answers `{"channel", "held", "streams", "last_id", "history"}`
//! (`history`: the items and bytes kept in the channel's history; response
//! holds and streams apart; an unknown channel is held 0, last id null: never a 404, so a backend can poll it until
//! its client is parked), and `GET /channels?limit=N&offset=M` a page of the busiest channels, most clients first. The list costs one
//! pass over the channel map and a heap of at most `offset + limit` entries.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use http::{Response, StatusCode};
use serde_json::json;

use super::respond::json;
use crate::body::Body;
use crate::hold::Registry;

/// Page size when `limit` is not given.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// Largest page.
pub(crate) const MAX_LIMIT: usize = 1000;
/// `offset + limit` at most: bounds the heap kept while the map is scanned. Deeper pages of a list ordered by
/// held clients are of no use (their order changes as clients come and go).
pub(crate) const MAX_WINDOW: usize = 10_000;

/// Answers `path` (`/channels`, `/channels/` or `/channels/<percent-encoded name>`) with `query`.
pub(crate) fn serve(registry: &Registry, path: &str, query: Option<&str>) -> Response<Body> {
    let name = path
        .strip_prefix("/channels")
        .unwrap_or_default()
        .trim_start_matches('/');
    if name.is_empty() {
        return match Page::from_query(query) {
            Ok(page) => json(StatusCode::OK, &list(registry, page)),
            Err(e) => json(StatusCode::BAD_REQUEST, &json!({ "error": e.to_string() })),
        };
    }
    match percent_encoding::percent_decode_str(name).decode_utf8() {
        Ok(name) => {
            let (items, bytes) = registry.history_of(&name);
            json(
                StatusCode::OK,
                &json!({
                    "channel": name,
                    "held": registry.held_on(&name),
                    "streams": registry.streams_on(&name),
                    "last_id": registry.last_id(&name),
                    "history": {"items": items, "bytes": bytes},
                }),
            )
        }
        Err(_) => json(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "channel name: not UTF-8 once percent-decoded" }),
        ),
    }
}

/// Which part of the list to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    /// Entries to answer, at most.
    pub limit: usize,
    /// Entries to skip first.
    pub offset: usize,
}

/// A query that asks for a page this endpoint does not serve: answered `400` with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PageError {
    /// `limit` or `offset` is not a number.
    #[error("{key}: {value:?} is not a non-negative integer")]
    NotANumber {
        /// `limit` or `offset`.
        key: &'static str,
        /// As given.
        value: String,
    },
    /// `limit` over [`MAX_LIMIT`].
    #[error("limit: at most {MAX_LIMIT}")]
    LimitTooLarge,
    /// `offset + limit` over [`MAX_WINDOW`].
    #[error("offset + limit: at most {MAX_WINDOW}")]
    TooDeep,
}

impl Page {
    /// Parses `limit=N&offset=M` (both optional; other parameters are ignored).
    pub(crate) fn from_query(query: Option<&str>) -> Result<Page, PageError> {
        let mut page = Page {
            limit: DEFAULT_LIMIT,
            offset: 0,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key, slot) = match key {
                "limit" => ("limit", &mut page.limit),
                "offset" => ("offset", &mut page.offset),
                _ => continue,
            };
            *slot = value.parse().map_err(|_| PageError::NotANumber {
                key,
                value: value.to_owned(),
            })?;
        }
        if page.limit > MAX_LIMIT {
            return Err(PageError::LimitTooLarge);
        }
        if page.offset.saturating_add(page.limit) > MAX_WINDOW {
            return Err(PageError::TooDeep);
        }
        Ok(page)
    }
}

/// One channel in the list. Ordered by busyness: more held clients first, then by name (so pages are stable).
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    /// Response holds plus streams: what the list is ordered by.
    held: usize,
    streams: usize,
    name: Box<str>,
    last_id: Option<Box<str>>,
}

impl Entry {
    /// Whether a channel with `held` clients named `name` ranks above this one.
    fn outranked_by(&self, held: usize, name: &str) -> bool {
        held > self.held || (held == self.held && name < &*self.name)
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Greater is busier; among equals the smaller name ranks first.
        self.held
            .cmp(&other.held)
            .then_with(|| other.name.cmp(&self.name))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The page of the busiest channels, as JSON: `{"total", "offset", "limit", "channels": [...]}`.
pub(crate) fn list(registry: &Registry, page: Page) -> serde_json::Value {
    let keep = page.offset + page.limit;
    // A min-heap of the `keep` busiest seen so far: its top is the least busy of them, the one a busier channel
    // replaces. Names are copied only for channels that enter it.
    let mut heap: BinaryHeap<Reverse<Entry>> = BinaryHeap::with_capacity(keep.min(1024));
    let mut total = 0usize;
    registry.for_each_channel(|name, responses, streams, last_id| {
        let held = responses + streams;
        total += 1;
        if keep == 0 {
            return;
        }
        if heap.len() == keep {
            match heap.peek() {
                Some(Reverse(least)) if least.outranked_by(held, name) => {
                    heap.pop();
                }
                _ => return,
            }
        }
        heap.push(Reverse(Entry {
            held,
            streams,
            name: name.into(),
            last_id: last_id.map(Into::into),
        }));
    });
    // Ascending `Reverse` is descending busyness.
    let channels: Vec<serde_json::Value> = heap
        .into_sorted_vec()
        .into_iter()
        .skip(page.offset)
        .map(|Reverse(e)| {
            json!({ "channel": e.name, "held": e.held - e.streams, "streams": e.streams, "last_id": e.last_id })
        })
        .collect();
    json!({
        "total": total,
        "offset": page.offset,
        "limit": page.limit,
        "channels": channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grip::ChannelSub;
    use crate::item::Item;
    use std::sync::Arc;

    fn sub(name: &str) -> ChannelSub {
        ChannelSub {
            name: name.into(),
            prev_id: None,
            filters: vec![],
        }
    }

    #[test]
    fn page_rules() {
        let page = |q| Page::from_query(q).map_err(|e| e.to_string());
        assert_eq!(
            page(None),
            Ok(Page {
                limit: 100,
                offset: 0
            })
        );
        assert_eq!(
            page(Some("offset=5&x=y&limit=7")),
            Ok(Page {
                limit: 7,
                offset: 5
            })
        );
        assert_eq!(page(Some("limit=1001")), Err("limit: at most 1000".into()));
        assert_eq!(
            page(Some("limit=1000&offset=9001")),
            Err("offset + limit: at most 10000".into())
        );
        assert_eq!(
            page(Some("limit=-1")),
            Err(r#"limit: "-1" is not a non-negative integer"#.into())
        );
        // An offset near the top of usize must not wrap past the window check.
        assert_eq!(
            page(Some(&format!("offset={}&limit=10", usize::MAX - 5))),
            Err("offset + limit: at most 10000".into())
        );
    }

    #[tokio::test]
    async fn busiest_first_then_by_name_and_paged() {
        let mut config = crate::hold::RegistryConfig::from(&crate::config::Config::default());
        config.max_held = 100;
        let r = Registry::new(config);
        let mut holds = Vec::new();
        for (name, n) in [("b", 2), ("a", 2), ("c", 3), ("d", 1)] {
            for _ in 0..n {
                holds.push(r.park(vec![sub(name)], true, None).unwrap());
            }
        }
        r.publish(&Arc::new(Item::test_response("e", Some("7"), None, "x")));
        let names = |v: &serde_json::Value| -> Vec<(String, u64)> {
            v["channels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["channel"].as_str().unwrap().to_owned(),
                        c["held"].as_u64().unwrap(),
                    )
                })
                .collect()
        };
        let all = list(
            &r,
            Page {
                limit: 10,
                offset: 0,
            },
        );
        assert_eq!(all["total"], 5);
        let want: Vec<(String, u64)> = [("c", 3), ("a", 2), ("b", 2), ("d", 1), ("e", 0)]
            .iter()
            .map(|(n, h)| (n.to_string(), *h))
            .collect();
        assert_eq!(names(&all), want);
        assert_eq!(all["channels"][4]["last_id"], "7");
        let second = list(
            &r,
            Page {
                limit: 2,
                offset: 1,
            },
        );
        assert_eq!(names(&second), want[1..3].to_vec());
        let none = list(
            &r,
            Page {
                limit: 0,
                offset: 0,
            },
        );
        assert_eq!(none["channels"].as_array().unwrap().len(), 0);
        assert_eq!(none["total"], 5);
    }
}
