//! Counts a JSON document's values and nesting before anything is built
//! from it. A 4 MiB body of one long array (`[0,0,0,…]`) is two million
//! values; as `serde_json::Value`s and then a typed Pod that took the
//! webhook to 160 MB, past its 64Mi limit. Walking the document with a
//! visitor that keeps nothing costs no memory, and a body over budget is
//! refused before it is deserialised.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// How much of a document the webhook accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Values of any kind (objects, arrays, strings, numbers, ...), keys excluded.
    pub max_values: usize,
    /// Objects and arrays inside one another.
    pub max_depth: usize,
}

/// Why a document is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("the body has more than {0} JSON values")]
    TooManyValues(usize),
    #[error("the body nests JSON objects and arrays more than {0} deep")]
    TooDeep(usize),
    #[error("the body is not JSON: {0}")]
    NotJson(String),
}

/// Checks `body` against `budget` without building anything from it.
pub fn check(body: &[u8], budget: Budget) -> Result<(), BudgetError> {
    let mut counter = Counter { budget, values: 0, over: None };
    let mut de = serde_json::Deserializer::from_slice(body);
    // serde_json stops at 128 levels by itself; our depth limit is lower.
    let result = Walk { counter: &mut counter, depth: 0 }.deserialize(&mut de).and_then(|()| de.end());
    match (counter.over, result) {
        (Some(over), _) => Err(over),
        (None, Ok(())) => Ok(()),
        (None, Err(e)) => Err(BudgetError::NotJson(e.to_string())),
    }
}

struct Counter {
    budget: Budget,
    values: usize,
    /// Set when the walk was stopped for exceeding the budget (the
    /// deserialiser's own error then only says "custom").
    over: Option<BudgetError>,
}

struct Walk<'a> {
    counter: &'a mut Counter,
    depth: usize,
}

impl Walk<'_> {
    fn count<E: de::Error>(&mut self) -> Result<(), E> {
        self.counter.values += 1;
        if self.counter.values > self.counter.budget.max_values {
            return Err(self.stop(BudgetError::TooManyValues(self.counter.budget.max_values)));
        }
        Ok(())
    }

    fn enter<E: de::Error>(&mut self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > self.counter.budget.max_depth {
            return Err(self.stop(BudgetError::TooDeep(self.counter.budget.max_depth)));
        }
        Ok(depth)
    }

    fn stop<E: de::Error>(&mut self, why: BudgetError) -> E {
        let error = E::custom(&why);
        self.counter.over = Some(why);
        error
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(mut self, _: bool) -> Result<(), E> {
        self.count()
    }
    fn visit_i64<E: de::Error>(mut self, _: i64) -> Result<(), E> {
        self.count()
    }
    fn visit_u64<E: de::Error>(mut self, _: u64) -> Result<(), E> {
        self.count()
    }
    fn visit_f64<E: de::Error>(mut self, _: f64) -> Result<(), E> {
        self.count()
    }
    fn visit_str<E: de::Error>(mut self, _: &str) -> Result<(), E> {
        self.count()
    }
    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.count()
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.count()?;
        let depth = self.enter()?;
        while seq.next_element_seed(Walk { counter: self.counter, depth })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.count()?;
        let depth = self.enter()?;
        // Keys are strings; serde_json borrows them where it can.
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Walk { counter: self.counter, depth })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Budget = Budget { max_values: 10, max_depth: 3 };

    #[test]
    fn counts_every_value_and_level() {
        assert_eq!(check(br#"{"a":[1,2,{"b":"c"}],"d":null}"#, SMALL), Ok(()));
        // 1 array + 10 numbers = 11 values.
        assert_eq!(check(b"[0,0,0,0,0,0,0,0,0,0]", SMALL), Err(BudgetError::TooManyValues(10)));
        assert_eq!(check(b"[0,0,0,0,0,0,0,0,0]", SMALL), Ok(()));
        assert_eq!(check(b"[[[1]]]", SMALL), Ok(()));
        assert_eq!(check(b"[[[[1]]]]", SMALL), Err(BudgetError::TooDeep(3)));
        assert_eq!(check(br#"{"a":{"b":{"c":{}}}}"#, SMALL), Err(BudgetError::TooDeep(3)));
    }

    #[test]
    fn refuses_what_is_not_json_with_the_reason() {
        for body in [&b""[..], b"{", b"[1,]", b"{} {}", b"\xff"] {
            assert!(matches!(check(body, SMALL), Err(BudgetError::NotJson(_))), "{body:?}");
        }
    }

    #[test]
    fn a_long_array_is_refused_early_without_building_it() {
        let mut body = b"[".to_vec();
        body.extend(std::iter::repeat_n(&b"0,"[..], 2_000_000).flatten());
        body.extend(b"0]");
        let budget = Budget { max_values: 50_000, max_depth: 64 };
        assert_eq!(check(&body, budget), Err(BudgetError::TooManyValues(50_000)));
    }

    #[test]
    fn deep_nesting_beyond_serde_json_s_own_limit_is_ours_to_report() {
        let body = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let budget = Budget { max_values: 1_000_000, max_depth: 64 };
        assert_eq!(check(body.as_bytes(), budget), Err(BudgetError::TooDeep(64)));
    }
}
