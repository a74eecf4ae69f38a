//! `queryAgents` and `findAgentsByCapability`.

use crate::model::{AgentStatus, RegisteredAgent};

use super::{AgentRegistry, Index, slot_id};

/// A filter over the registered agents (`GET /maestro/agents`).
///
/// Within one list the values are alternatives (OR), across lists all must hold
/// (AND); an empty list does not filter. `tags` match when some capability of the
/// agent carries one of them. Results are ordered by agent id; `offset` skips that
/// many matches and `limit` caps the page (0 gives an empty page, still with the
/// total).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentQuery {
    pub types: Vec<String>,
    pub statuses: Vec<AgentStatus>,
    pub capabilities: Vec<String>,
    pub tags: Vec<String>,
    pub limit: usize,
    pub offset: usize,
}

impl Default for AgentQuery {
    fn default() -> Self {
        AgentQuery {
            types: Vec::new(),
            statuses: Vec::new(),
            capabilities: Vec::new(),
            tags: Vec::new(),
            limit: 100,
            offset: 0,
        }
    }
}

impl AgentQuery {
    fn is_unfiltered(&self) -> bool {
        self.types.is_empty()
            && self.statuses.is_empty()
            && self.capabilities.is_empty()
            && self.tags.is_empty()
    }

    /// Whether `a` matches, not re-checking the filter the candidates came from.
    fn matches(&self, a: &RegisteredAgent, covered: Covered) -> bool {
        (self.types.is_empty() || covered == Covered::Types || self.types.contains(&a.agent_type))
            && (self.statuses.is_empty() || self.statuses.contains(&a.status))
            && (self.capabilities.is_empty()
                || covered == Covered::Capabilities
                || a.capabilities
                    .iter()
                    .any(|c| self.capabilities.contains(&c.id)))
            && (self.tags.is_empty()
                || covered == Covered::Tags
                || a.capabilities
                    .iter()
                    .any(|c| c.tags.iter().any(|t| self.tags.contains(t))))
    }
}

/// Which filter every candidate is known to pass, having come from its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Covered {
    Nothing,
    Types,
    Capabilities,
    Tags,
}

/// The agents a query has to look at, in agent-id order.
enum Candidates<'a> {
    All,
    Sorted(&'a [u32]),
    Owned(Vec<u32>),
}

impl AgentRegistry {
    /// Agents matching `q`, as one page plus the total number of matches.
    ///
    /// With a type, capability or tag filter only the agents under those keys of
    /// the type, capability or tag index are examined (the smallest of these sets);
    /// with a status filter alone every agent is; with no filter at all only the
    /// page is.
    pub fn query_agents(&self, q: &AgentQuery) -> (Vec<&RegisteredAgent>, usize) {
        if q.is_unfiltered() {
            let page = self
                .ids
                .values()
                .skip(q.offset)
                .take(q.limit)
                .filter_map(|&s| self.slot(s))
                .map(|slot| &slot.agent)
                .collect();
            return (page, self.len());
        }
        let (candidates, covered) = self.candidates(q);
        let candidates: Box<dyn Iterator<Item = u32> + '_> = match candidates {
            Candidates::All => Box::new(self.ids.values().copied()),
            Candidates::Sorted(list) => Box::new(list.iter().copied()),
            Candidates::Owned(list) => Box::new(list.into_iter()),
        };
        let mut page = Vec::new();
        let mut total = 0usize;
        for slot in candidates.filter_map(|s| self.slot(s)) {
            if q.matches(&slot.agent, covered) {
                if total >= q.offset && page.len() < q.limit {
                    page.push(&slot.agent);
                }
                total += 1;
            }
        }
        (page, total)
    }

    /// The agents that declare `capability`, ordered by agent id: one hash lookup
    /// in the capability index, then one step per holder.
    pub fn find_agents_by_capability(&self, capability: &str) -> Vec<&RegisteredAgent> {
        self.by_capability
            .get(capability)
            .iter()
            .filter_map(|&s| self.slot(s))
            .map(|slot| &slot.agent)
            .collect()
    }

    /// The smallest candidate set the indexes give for `q` (capabilities, tags
    /// or types), and the filter it already satisfies.
    fn candidates(&self, q: &AgentQuery) -> (Candidates<'_>, Covered) {
        let options = [
            (&self.by_type, &q.types, Covered::Types),
            (&self.by_capability, &q.capabilities, Covered::Capabilities),
            (&self.by_tag, &q.tags, Covered::Tags),
        ];
        let chosen = options
            .into_iter()
            .filter(|(_, keys, _)| !keys.is_empty())
            .map(|(index, keys, covered)| (index_lists(index, keys), covered))
            .min_by_key(|((_, size), _)| *size);
        let Some(((mut lists, _), covered)) = chosen else {
            return (Candidates::All, Covered::Nothing);
        };
        let candidates = match lists.len() {
            0 => Candidates::Owned(Vec::new()),
            1 => Candidates::Sorted(lists.pop().unwrap_or_default()),
            _ => {
                let mut all: Vec<u32> = lists.concat();
                all.sort_unstable_by(|&a, &b| slot_id(&self.slots, a).cmp(slot_id(&self.slots, b)));
                all.dedup();
                Candidates::Owned(all)
            }
        };
        (candidates, covered)
    }
}

/// The non-empty lists of `index` under the distinct `keys`, and their total length.
fn index_lists<'i>(index: &'i Index, keys: &[String]) -> (Vec<&'i [u32]>, usize) {
    // The same key twice would count its agents twice.
    let mut keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    keys.sort_unstable();
    keys.dedup();
    let lists: Vec<&[u32]> = keys
        .into_iter()
        .map(|k| index.get(k))
        .filter(|l| !l.is_empty())
        .collect();
    let size = lists.iter().map(|l| l.len()).sum();
    (lists, size)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{agent, ids};
    use super::*;

    fn registry() -> AgentRegistry {
        let mut r = AgentRegistry::default();
        let mut s1 = agent("sentinel-1", "sentinel", &["sign", "verify"]);
        s1.capabilities[0].tags = vec!["crypto".into()];
        let mut s2 = agent("sentinel-2", "sentinel", &["sign"]);
        s2.capabilities[0].tags = vec!["crypto".into(), "fast".into()];
        s2.status = AgentStatus::Offline;
        let mut b1 = agent("bridge-1", "bridge", &["translate"]);
        b1.capabilities[0].tags = vec!["protocol".into()];
        let mut p1 = agent("prism-1", "prism", &["unify", "verify"]);
        p1.status = AgentStatus::Degraded;
        p1.capabilities[1].tags = vec!["crypto".into()];
        for a in [s1, s2, b1, p1] {
            r.register_agent(a, 1).unwrap();
        }
        r
    }

    fn query(r: &AgentRegistry, q: AgentQuery) -> (Vec<String>, usize) {
        let (page, total) = r.query_agents(&q);
        (page.iter().map(|a| a.id.clone()).collect(), total)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn queries_by_type() {
        let r = registry();
        let (ids, total) = query(
            &r,
            AgentQuery {
                types: strings(&["sentinel"]),
                ..AgentQuery::default()
            },
        );
        assert_eq!(ids, ["sentinel-1", "sentinel-2"]);
        assert_eq!(total, 2);
        let (ids, _) = query(
            &r,
            AgentQuery {
                types: strings(&["prism", "bridge"]),
                ..AgentQuery::default()
            },
        );
        assert_eq!(ids, ["bridge-1", "prism-1"]);
        let (ids, total) = query(&r, AgentQuery::default());
        assert_eq!(ids, ["bridge-1", "prism-1", "sentinel-1", "sentinel-2"]);
        assert_eq!(total, 4);
    }

    #[test]
    fn queries_by_status() {
        let r = registry();
        let (ids, _) = query(
            &r,
            AgentQuery {
                statuses: vec![AgentStatus::Online],
                ..AgentQuery::default()
            },
        );
        assert_eq!(ids, ["bridge-1", "sentinel-1"]);
        let (ids, _) = query(
            &r,
            AgentQuery {
                statuses: vec![AgentStatus::Offline, AgentStatus::Degraded],
                ..AgentQuery::default()
            },
        );
        assert_eq!(ids, ["prism-1", "sentinel-2"]);
    }

    #[test]
    fn queries_by_capability() {
        let r = registry();
        let (ids, _) = query(
            &r,
            AgentQuery {
                capabilities: strings(&["verify"]),
                ..AgentQuery::default()
            },
        );
        assert_eq!(ids, ["prism-1", "sentinel-1"]);
        let (ids, total) = query(
            &r,
            AgentQuery {
                capabilities: strings(&["translate", "sign", "sign", "nope"]),
                ..AgentQuery::default()
            },
        );
        assert_eq!(ids, ["bridge-1", "sentinel-1", "sentinel-2"]);
        assert_eq!(total, 3);
        let (ids, total) = query(
            &r,
            AgentQuery {
                capabilities: strings(&["nope"]),
                ..AgentQuery::default()
            },
        );
        assert!(ids.is_empty());
        assert_eq!(total, 0);
        assert_eq!(
            ids_of(r.find_agents_by_capability("verify")),
            ["prism-1", "sentinel-1"]
        );
        assert!(r.find_agents_by_capability("nope").is_empty());
    }

    fn ids_of(v: Vec<&RegisteredAgent>) -> Vec<String> {
        ids(v.into_iter())
    }

    #[test]
    fn queries_by_tag() {
        let r = registry();
        let (ids, _) = query(
            &r,
            AgentQuery {
                tags: strings(&["crypto"]),
                ..AgentQuery::default()
            },
        );
        assert_eq!(ids, ["prism-1", "sentinel-1", "sentinel-2"]);
        let (ids, _) = query(
            &r,
            AgentQuery {
                tags: strings(&["fast", "protocol"]),
                ..AgentQuery::default()
            },
        );
        assert_eq!(ids, ["bridge-1", "sentinel-2"]);
    }

    #[test]
    fn filters_combine_with_and() {
        let r = registry();
        let (ids, _) = query(
            &r,
            AgentQuery {
                tags: strings(&["crypto"]),
                capabilities: strings(&["verify"]),
                statuses: vec![AgentStatus::Online],
                ..AgentQuery::default()
            },
        );
        assert_eq!(ids, ["sentinel-1"]);
        let (ids, _) = query(
            &r,
            AgentQuery {
                types: strings(&["sentinel"]),
                capabilities: strings(&["sign"]),
                statuses: vec![AgentStatus::Offline],
                ..AgentQuery::default()
            },
        );
        assert_eq!(ids, ["sentinel-2"]);
    }

    #[test]
    fn limit_offset_and_total() {
        let r = registry();
        let page = |limit, offset| {
            query(
                &r,
                AgentQuery {
                    limit,
                    offset,
                    ..AgentQuery::default()
                },
            )
        };
        assert_eq!(page(2, 0), (strings(&["bridge-1", "prism-1"]), 4));
        assert_eq!(page(2, 2), (strings(&["sentinel-1", "sentinel-2"]), 4));
        assert_eq!(page(2, 3), (strings(&["sentinel-2"]), 4));
        assert_eq!(page(2, 9), (vec![], 4));
        assert_eq!(page(0, 0), (vec![], 4));
        assert_eq!(page(usize::MAX, usize::MAX), (vec![], 4));
        let (ids, total) = query(
            &r,
            AgentQuery {
                tags: strings(&["crypto"]),
                limit: 1,
                offset: 1,
                ..AgentQuery::default()
            },
        );
        assert_eq!((ids, total), (strings(&["sentinel-1"]), 3));
    }
}
