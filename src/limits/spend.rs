//! Money: an API's price table and the integer arithmetic of spend. Prices are USD per million
//! tokens, which is exactly micro-dollars per token; they are held as pico-dollars per token so that
//! six decimals of a price stay exact, and spend is counted in whole micro-dollars, always rounded up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::Error;

/// Pico-dollars in a micro-dollar.
const PICO_PER_MICRO: u128 = 1_000_000;
/// The largest price or budget accepted (USD): far above any real one, far below overflow.
const MAX_USD: f64 = 1e9;

/// Converts a USD amount with at most six decimals to millionths (`0.15` → 150000), or says why not:
/// an amount with a seventh decimal (`1.0000005`, `1e-7`) is refused, never rounded.
pub fn usd_to_millionths(field: &str, usd: f64) -> Result<u64, Error> {
    let scaled = usd * 1e6;
    let rounded = scaled.round();
    // The decimal the client wrote was rounded once to read it as an f64 and once more when scaled:
    // a whole number of millionths lands within `scaled × 2⁻⁵²` of `rounded` (at most 0.23 at the
    // largest amount), an amount off by half a millionth at least 0.27 away. Below 4,500 USD the
    // floor of 10⁻⁶ millionths decides, so 0.1 millionth is refused there too.
    let tolerance = (1.125 * f64::EPSILON * scaled.abs()).max(1e-6);
    let refuse = |why: String| Err(Error::invalid_request(why).with_field("param", field));
    if !usd.is_finite() || !(0.0..=MAX_USD).contains(&usd) {
        return refuse(format!(
            "`{field}` must be a number of US dollars from 0 to {MAX_USD}"
        ));
    }
    // A nonzero amount never reads as 0 (a price of 1e-12 would make the model free).
    if (scaled - rounded).abs() > tolerance || (usd > 0.0 && rounded == 0.0) {
        return refuse(format!(
            "`{field}` must be a number of US dollars with at most 6 decimals"
        ));
    }
    Ok(rounded as u64)
}

/// Micro-dollars as a USD number for JSON (`150000` → `0.15`).
pub fn micro_to_usd(micro: u64) -> f64 {
    micro as f64 / 1e6
}

/// One model's prices, in pico-dollars per token (= USD per million tokens × 10⁶).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    /// Cached prompt tokens; the input price when the table names none.
    pub cached_input: u64,
}

impl Price {
    /// A price at least each of the two's, per kind of token: what a reservation holds when either
    /// model may answer.
    pub fn dearest(&self, other: &Price) -> Price {
        Price {
            input: self.input.max(other.input),
            output: self.output.max(other.output),
            cached_input: self.cached_input.max(other.cached_input),
        }
    }

    /// What a prompt may cost at most: cached tokens never cost more than the input price here.
    fn prompt_rate(&self) -> u64 {
        self.input.max(self.cached_input)
    }

    /// Micro-dollars (rounded up) of a reservation: `prompt` tokens in, `completion` tokens out.
    pub fn reserve_micro(&self, prompt: u64, completion: u64) -> u64 {
        let pico = u128::from(prompt) * u128::from(self.prompt_rate())
            + u128::from(completion) * u128::from(self.output);
        ceil_micro(pico)
    }

    /// Micro-dollars (rounded up) of real use, `cached` of the prompt at the cached price.
    pub fn cost_micro(&self, prompt: u64, cached: u64, completion: u64) -> u64 {
        let cached = cached.min(prompt);
        let pico = u128::from(prompt - cached) * u128::from(self.input)
            + u128::from(cached) * u128::from(self.cached_input)
            + u128::from(completion) * u128::from(self.output);
        ceil_micro(pico)
    }

    /// The most completion tokens per choice that keep a reservation within `room` micro-dollars,
    /// given the prompt bound and `n` choices; `None` when output is free (no spend cap).
    pub fn completion_cap(&self, room_micro: u64, prompt: u64, n: u64) -> Option<u64> {
        if self.output == 0 {
            return None;
        }
        let room = u128::from(room_micro) * PICO_PER_MICRO;
        let prompt_cost = u128::from(prompt) * u128::from(self.prompt_rate());
        let per_token = u128::from(self.output) * u128::from(n.max(1));
        let cap = room.saturating_sub(prompt_cost) / per_token;
        Some(u64::try_from(cap).unwrap_or(u64::MAX))
    }

    /// Output tokens that `room` micro-dollars still buy (for extending a stream's budget).
    pub fn tokens_for(&self, room_micro: u64) -> Option<u64> {
        (self.output > 0).then(|| {
            let t = u128::from(room_micro) * PICO_PER_MICRO / u128::from(self.output);
            u64::try_from(t).unwrap_or(u64::MAX)
        })
    }
}

fn ceil_micro(pico: u128) -> u64 {
    u64::try_from(pico.div_ceil(PICO_PER_MICRO)).unwrap_or(u64::MAX)
}

/// A price as the owner writes it: USD per million tokens.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceInput {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub cached_input_per_mtok: Option<f64>,
}

/// The API's prices per model name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceTable(pub BTreeMap<String, Price>);

/// Model names in a price table are as long as a request's `model` may be.
pub const MAX_MODEL_LEN: usize = 256;

impl PriceTable {
    /// Validates the owner's table (`{"<model>": {input_per_mtok, output_per_mtok, cached_input_per_mtok?}}`).
    pub fn from_input(input: &BTreeMap<String, PriceInput>) -> Result<PriceTable, Error> {
        if input.len() > 500 {
            return Err(
                Error::invalid_request("`prices` may name at most 500 models")
                    .with_field("param", "prices"),
            );
        }
        let mut table = BTreeMap::new();
        for (model, p) in input {
            if model.is_empty()
                || model.chars().count() > MAX_MODEL_LEN
                || model.chars().any(char::is_control)
            {
                return Err(Error::invalid_request(format!(
                    "`prices` keys must be model names of 1-{MAX_MODEL_LEN} characters"
                ))
                .with_field("param", "prices"));
            }
            let input =
                usd_to_millionths(&format!("prices.{model}.input_per_mtok"), p.input_per_mtok)?;
            let output = usd_to_millionths(
                &format!("prices.{model}.output_per_mtok"),
                p.output_per_mtok,
            )?;
            let cached_input = match p.cached_input_per_mtok {
                Some(c) => usd_to_millionths(&format!("prices.{model}.cached_input_per_mtok"), c)?,
                None => input,
            };
            table.insert(
                model.clone(),
                Price {
                    input,
                    output,
                    cached_input,
                },
            );
        }
        Ok(PriceTable(table))
    }

    pub fn get(&self, model: &str) -> Option<Price> {
        self.0.get(model).copied()
    }

    /// The owner's view: USD per million tokens again.
    pub fn to_json(&self) -> Value {
        let entries: serde_json::Map<String, Value> = self
            .0
            .iter()
            .map(|(m, p)| {
                (
                    m.clone(),
                    json!({
                        "input_per_mtok": micro_to_usd(p.input),
                        "output_per_mtok": micro_to_usd(p.output),
                        "cached_input_per_mtok": micro_to_usd(p.cached_input),
                    }),
                )
            })
            .collect();
        Value::Object(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: f64, output: f64) -> Price {
        Price {
            input: usd_to_millionths("i", input).unwrap(),
            output: usd_to_millionths("o", output).unwrap(),
            cached_input: usd_to_millionths("i", input).unwrap(),
        }
    }

    #[test]
    fn dollars_with_six_decimals_are_exact() {
        assert_eq!(usd_to_millionths("x", 0.15).unwrap(), 150_000);
        assert_eq!(usd_to_millionths("x", 0.000001).unwrap(), 1);
        assert_eq!(usd_to_millionths("x", 0.01).unwrap(), 10_000);
        assert_eq!(
            usd_to_millionths("x", 123456.123456).unwrap(),
            123_456_123_456
        );
        for bad in [0.0000001, -1.0, f64::NAN, f64::INFINITY, 2e9] {
            assert!(usd_to_millionths("x", bad).is_err(), "{bad}");
        }
    }

    /// `m` millionths written as a decimal, with `extra` appended after the sixth decimal.
    fn decimal(m: u64, extra: &str) -> f64 {
        format!("{}.{:06}{extra}", m / 1_000_000, m % 1_000_000)
            .parse()
            .unwrap()
    }

    #[test]
    fn a_seventh_decimal_is_refused_at_every_magnitude() {
        for bad in [
            1.0000005,
            1e-7,
            1e-12,
            5e-324,
            0.0000015,
            1.00000001,
            12345.6789015,
            999.9999999,
            1_000_000.0000005,
        ] {
            let e = usd_to_millionths("spend_per_day_usd", bad).unwrap_err();
            assert_eq!(e.extra["param"], "spend_per_day_usd", "{bad}");
        }
        for (ok, m) in [
            (1.000001, 1_000_001),
            (0.000001, 1),
            (12345.678901, 12_345_678_901),
            (1.0, 1_000_000),
            (0.0, 0),
            (1e9, 1_000_000_000_000_000),
            (999_999_999.999999, 999_999_999_999_999),
        ] {
            assert_eq!(usd_to_millionths("x", ok).unwrap(), m, "{ok}");
        }
        // Amounts from a millionth to a billion dollars, spread over every magnitude: the whole
        // number of millionths is exact, half a millionth more is refused, and where an f64 still
        // holds it (below ~10⁵ USD), a tenth of a millionth more is refused too.
        let mut m: u64 = 1;
        let mut step: u64 = 1;
        while m <= 999_999_999_999_999 {
            assert_eq!(usd_to_millionths("x", decimal(m, "")).unwrap(), m, "{m}");
            assert!(usd_to_millionths("x", decimal(m, "5")).is_err(), "{m}.5");
            if m < 100_000_000_000 {
                assert!(usd_to_millionths("x", decimal(m, "1")).is_err(), "{m}.1");
                assert!(usd_to_millionths("x", decimal(m, "9")).is_err(), "{m}.9");
            }
            m += step;
            step = step * 3 / 2 + 7;
        }
        for m in (0..200_000).chain(1_000_000..1_200_000) {
            assert_eq!(usd_to_millionths("x", decimal(m, "")).unwrap(), m, "{m}");
            assert!(usd_to_millionths("x", decimal(m, "5")).is_err(), "{m}.5");
        }
        for m in (999_999_999_000_000..=999_999_999_999_999).step_by(7_919) {
            assert_eq!(usd_to_millionths("x", decimal(m, "")).unwrap(), m, "{m}");
            assert!(usd_to_millionths("x", decimal(m, "5")).is_err(), "{m}.5");
        }
    }

    #[test]
    fn costs_round_up_to_the_micro_dollar() {
        // gpt-4o-mini style: $0.15 in, $0.60 out per million tokens.
        let p = price(0.15, 0.60);
        assert_eq!(p.cost_micro(1_000_000, 0, 0), 150_000);
        assert_eq!(p.cost_micro(1, 0, 0), 1, "0.15 µ$ rounds up to 1 µ$");
        assert_eq!(p.cost_micro(10, 0, 10), 8, "1.5 + 6 = 7.5 µ$ → 8");
        let cached = Price {
            cached_input: 75_000,
            ..p
        };
        assert_eq!(cached.cost_micro(1_000_000, 1_000_000, 0), 75_000);
        assert_eq!(
            cached.cost_micro(10, 99, 0),
            1,
            "cached never exceeds the prompt"
        );
    }

    #[test]
    fn the_cap_keeps_the_reservation_within_the_room() {
        let p = price(0.15, 0.60);
        for (room, prompt, n) in [
            (10_000u64, 1_000u64, 1u64),
            (10_000, 20_000, 3),
            (1, 0, 1),
            (7, 5, 8),
            (0, 0, 1),
        ] {
            let cap = p.completion_cap(room, prompt, n).unwrap();
            assert!(
                p.reserve_micro(prompt, cap * n) <= room || cap == 0,
                "{room} {prompt} {n}"
            );
            assert!(
                p.reserve_micro(prompt, (cap + 1) * n) > room,
                "cap is the largest: {room} {prompt} {n}"
            );
        }
        assert_eq!(price(1.0, 0.0).completion_cap(5, 1, 1), None);
        assert_eq!(p.completion_cap(u64::MAX, 0, 1), Some(u64::MAX));
        assert_eq!(p.tokens_for(6), Some(10));
    }

    #[test]
    fn tables_validate_and_render_back() {
        let input: BTreeMap<String, PriceInput> = crate::encoding::from_json(
            r#"{"gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.6, "cached_input_per_mtok": 0.075}}"#,
        )
        .unwrap();
        let t = PriceTable::from_input(&input).unwrap();
        assert_eq!(t.get("gpt-4o-mini").map(|p| p.cached_input), Some(75_000));
        assert_eq!(t.to_json()["gpt-4o-mini"]["output_per_mtok"], 0.6);
        let bad: BTreeMap<String, PriceInput> =
            crate::encoding::from_json(r#"{"m": {"input_per_mtok": -1, "output_per_mtok": 1}}"#)
                .unwrap();
        assert_eq!(PriceTable::from_input(&bad).unwrap_err().status, 400);
        assert!(crate::encoding::from_json::<BTreeMap<String, PriceInput>>(
            r#"{"m": {"input_per_mtok": 1}}"#
        )
        .is_err());
    }

    #[test]
    fn stored_price_format_is_unchanged() {
        let t = PriceTable(BTreeMap::from([(
            "m".to_string(),
            Price {
                input: 1,
                output: 2,
                cached_input: 3,
            },
        )]));
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"m":{"input":1,"output":2,"cached_input":3}}"#
        );
    }
}
