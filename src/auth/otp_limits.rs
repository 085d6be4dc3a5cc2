//! OTP guessing and sending limits: what one email's sign-in object and one client network's object
//! hold (challenges, sends, wrong codes, failed verifies, sign-ups), each bounded and expiring (times
//! in epoch ms).

use serde::{Deserialize, Serialize};

use crate::auth::otp::{Challenge, Verdict, CODE_TTL_MS};

pub const HOUR_MS: i64 = 60 * 60 * 1000;
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// The shortest time between two codes sent to one email from one network.
pub const SEND_GAP_MS: i64 = 30_000;
/// Codes sent to one email from one network per hour.
pub const SENDS_PER_NETWORK_PER_HOUR: usize = 5;
/// Codes sent to one email from all networks per hour: a bound on mail to one inbox that takes
/// more than three networks to reach, so one attacker's starts never stop the user's own.
pub const SENDS_PER_EMAIL_PER_HOUR: usize = 20;
/// Entries a list keeps at most, whatever the limits: the object's size is bounded.
const MAX_ENTRIES: usize = 10_000;

/// Something that happened from one client network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Stamp {
    pub at: i64,
    pub network: String,
}

/// An email's limits on wrong codes (the project's policy).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct GuessLimits {
    pub per_network_per_hour: usize,
    pub per_email_per_day: usize,
}

/// What checking a code against an email's challenges answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked {
    Verified,
    Wrong {
        attempts_left: u32,
    },
    Expired,
    Locked,
    /// No live challenge has this id (used, expired long ago, or never issued).
    NoChallenge,
    /// Too many wrong codes for this email (from this network, or from all): not evaluated.
    Throttled {
        retry_after_s: u64,
    },
}

/// One email's sign-in state: its live challenges, recent sends, and wrong codes of the last day.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct EmailGuard {
    #[serde(default)]
    pub challenges: Vec<Challenge>,
    #[serde(default)]
    pub sends: Vec<Stamp>,
    #[serde(default)]
    pub wrong: Vec<Stamp>,
}

fn seconds_until(now: i64, at: i64) -> u64 {
    let ms = at.saturating_sub(now).max(1);
    u64::try_from(ms.saturating_add(999) / 1000)
        .unwrap_or(1)
        .max(1)
}

/// Seconds until fewer than `max` of `times` (pruned to the last `span`) remain: `None` if that
/// is already so.
fn wait_for_room(times: impl Iterator<Item = i64>, now: i64, span: i64, max: usize) -> Option<u64> {
    let mut recent: Vec<i64> = times.filter(|t| now.saturating_sub(*t) < span).collect();
    if recent.len() < max {
        return None;
    }
    recent.sort_unstable();
    // The entry whose leaving brings the count under `max`.
    let leaving = recent[recent.len() - max];
    Some(seconds_until(now, leaving.saturating_add(span)))
}

impl EmailGuard {
    /// Drops what has expired.
    pub fn prune(&mut self, now: i64) {
        // A challenge is kept an hour past its expiry, so a late try is told it expired.
        self.challenges
            .retain(|c| now < c.expires_at.saturating_add(HOUR_MS));
        self.sends.retain(|s| now.saturating_sub(s.at) < HOUR_MS);
        self.wrong.retain(|s| now.saturating_sub(s.at) < DAY_MS);
    }

    /// Sends a code for `challenge` if the email's send limits allow it: at least 30 s since the
    /// last code from the same network, at most 5 per hour from one network and 20 from all.
    pub fn send(&mut self, now: i64, challenge: Challenge) -> Result<(), u64> {
        self.prune(now);
        let network = challenge.network.clone();
        let from_here = || {
            self.sends
                .iter()
                .filter(|s| s.network == network)
                .map(|s| s.at)
        };
        if let Some(last) = from_here().max() {
            if now < last.saturating_add(SEND_GAP_MS) {
                return Err(seconds_until(now, last.saturating_add(SEND_GAP_MS)));
            }
        }
        let waits = [
            wait_for_room(from_here(), now, HOUR_MS, SENDS_PER_NETWORK_PER_HOUR),
            wait_for_room(
                self.sends.iter().map(|s| s.at),
                now,
                HOUR_MS,
                SENDS_PER_EMAIL_PER_HOUR,
            ),
        ];
        if let Some(wait) = waits.into_iter().flatten().max() {
            return Err(wait);
        }
        self.sends.push(Stamp { at: now, network });
        self.challenges.push(challenge);
        let extra = self
            .challenges
            .len()
            .saturating_sub(SENDS_PER_EMAIL_PER_HOUR);
        self.challenges.drain(..extra);
        Ok(())
    }

    /// Checks `code_hash` against the challenge `id`. Wrong codes count against that challenge
    /// (5 tries) and against the email: per network per hour and from all networks per day, past
    /// which nothing is evaluated. Another challenge of the same email keeps its own tries.
    pub fn check(
        &mut self,
        now: i64,
        id: &str,
        code_hash: &str,
        network: &str,
        limits: GuessLimits,
    ) -> Checked {
        self.prune(now);
        let waits = [
            wait_for_room(
                self.wrong
                    .iter()
                    .filter(|s| s.network == network)
                    .map(|s| s.at),
                now,
                HOUR_MS,
                limits.per_network_per_hour,
            ),
            wait_for_room(
                self.wrong.iter().map(|s| s.at),
                now,
                DAY_MS,
                limits.per_email_per_day,
            ),
        ];
        if let Some(retry_after_s) = waits.into_iter().flatten().max() {
            return Checked::Throttled { retry_after_s };
        }
        let Some(at) = self.challenges.iter().position(|c| c.id == id) else {
            return Checked::NoChallenge;
        };
        match self.challenges[at].check(now, code_hash) {
            Verdict::Ok => {
                self.challenges.remove(at);
                Checked::Verified
            }
            Verdict::Wrong { attempts_left } => {
                if self.wrong.len() < MAX_ENTRIES {
                    self.wrong.push(Stamp {
                        at: now,
                        network: network.to_string(),
                    });
                }
                Checked::Wrong { attempts_left }
            }
            Verdict::Expired => Checked::Expired,
            Verdict::Locked => Checked::Locked,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.challenges.is_empty() && self.sends.is_empty() && self.wrong.is_empty()
    }

    /// When everything held will have expired.
    pub fn expires_at(&self) -> Option<i64> {
        let challenges = self
            .challenges
            .iter()
            .map(|c| c.expires_at.saturating_add(HOUR_MS));
        let sends = self.sends.iter().map(|s| s.at.saturating_add(HOUR_MS));
        let wrong = self.wrong.iter().map(|s| s.at.saturating_add(DAY_MS));
        challenges.chain(sends).chain(wrong).max()
    }
}

/// One client network's sign-in traffic across all emails of a project.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct NetworkGuard {
    #[serde(default)]
    pub starts: Vec<i64>,
    #[serde(default)]
    pub failures: Vec<i64>,
    #[serde(default)]
    pub signups: Vec<i64>,
    /// OAuth dynamic client registrations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registrations: Vec<i64>,
}

/// Records `now` in `times` if fewer than `max` happened in the last `span`.
fn take(times: &mut Vec<i64>, now: i64, span: i64, max: usize) -> Result<(), u64> {
    times.retain(|t| now.saturating_sub(*t) < span);
    if let Some(wait) = wait_for_room(times.iter().copied(), now, span, max.min(MAX_ENTRIES)) {
        return Err(wait);
    }
    times.push(now);
    Ok(())
}

impl NetworkGuard {
    /// Drops what has expired.
    pub fn prune(&mut self, now: i64) {
        self.starts.retain(|t| now.saturating_sub(*t) < HOUR_MS);
        self.failures.retain(|t| now.saturating_sub(*t) < HOUR_MS);
        self.signups.retain(|t| now.saturating_sub(*t) < DAY_MS);
        self.registrations
            .retain(|t| now.saturating_sub(*t) < HOUR_MS);
    }

    /// An OAuth client registration from this network, if fewer than `max` came in the last hour.
    pub fn register(&mut self, now: i64, max: usize) -> Result<(), u64> {
        take(&mut self.registrations, now, HOUR_MS, max)
    }

    /// A code request from this network, if fewer than `max` came in the last hour.
    pub fn start(&mut self, now: i64, max: usize) -> Result<(), u64> {
        take(&mut self.starts, now, HOUR_MS, max)
    }

    /// Whether this network may try a code: fewer than `max` failed verifies in the hour. The try
    /// is counted as a failure at once (so parallel tries cannot all pass the check); a try that
    /// signs in takes it back with [`NetworkGuard::verified`].
    pub fn may_verify(&mut self, now: i64, max: usize) -> Result<(), u64> {
        take(&mut self.failures, now, HOUR_MS, max)
    }

    /// The try counted at `at` signed in: it was no failure.
    pub fn verified(&mut self, at: i64) {
        if let Some(i) = self.failures.iter().rposition(|t| *t == at) {
            self.failures.remove(i);
        }
    }

    /// A new account from this network, if fewer than `max` were created in the last day.
    pub fn sign_up(&mut self, now: i64, max: usize) -> Result<(), u64> {
        take(&mut self.signups, now, DAY_MS, max)
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
            && self.failures.is_empty()
            && self.signups.is_empty()
            && self.registrations.is_empty()
    }

    pub fn expires_at(&self) -> Option<i64> {
        let hourly = self
            .starts
            .iter()
            .chain(&self.failures)
            .chain(&self.registrations)
            .map(|t| t + HOUR_MS);
        let daily = self.signups.iter().map(|t| t + DAY_MS);
        hourly.chain(daily).max()
    }
}

/// How long a code lives (re-exported for the routes' wording).
pub const CODE_TTL_S: i64 = CODE_TTL_MS / 1000;

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;
    const LIMITS: GuessLimits = GuessLimits {
        per_network_per_hour: 10,
        per_email_per_day: 30,
    };

    fn challenge(id: &str, hash: &str, now: i64, network: &str) -> Challenge {
        Challenge::new(id.into(), hash.into(), now, network.into())
    }

    #[test]
    fn an_attackers_wrong_codes_leave_the_users_challenge_alone() {
        let mut g = EmailGuard::default();
        g.send(T0, challenge("attacker", "h-a", T0, "198.51.100.1"))
            .unwrap();
        for left in (0..5).rev() {
            assert_eq!(
                g.check(T0 + 1, "attacker", "guess", "198.51.100.1", LIMITS),
                Checked::Wrong {
                    attempts_left: left
                }
            );
        }
        assert_eq!(
            g.check(T0 + 2, "attacker", "h-a", "198.51.100.1", LIMITS),
            Checked::Locked
        );
        // The user's own start from another network is not throttled, and their code works.
        g.send(T0 + 3, challenge("user", "h-u", T0 + 3, "203.0.113.9"))
            .unwrap();
        assert_eq!(
            g.check(T0 + 4, "user", "h-u", "203.0.113.9", LIMITS),
            Checked::Verified
        );
        // Four more starts from the attacker's network still leave the user's start alone.
        let mut g = EmailGuard::default();
        for i in 0..5 {
            let at = T0 + i * SEND_GAP_MS;
            g.send(at, challenge(&format!("a{i}"), "h", at, "198.51.100.1"))
                .unwrap();
        }
        assert!(g
            .send(
                T0 + 10 * SEND_GAP_MS,
                challenge("a9", "h", T0, "198.51.100.1")
            )
            .is_err());
        assert!(g
            .send(
                T0 + 10 * SEND_GAP_MS,
                challenge("u", "h", T0, "203.0.113.9")
            )
            .is_ok());
    }

    #[test]
    fn forty_networks_stop_at_thirty_wrong_codes_a_day() {
        let mut g = EmailGuard::default();
        let mut evaluated = 0;
        for n in 0..40 {
            let network = format!("10.0.0.{n}");
            let at = T0 + n * 1000;
            g.send(at, challenge(&format!("c{n}"), "right", at, &network))
                .ok();
            for _ in 0..5 {
                match g.check(at + 1, &format!("c{n}"), "wrong", &network, LIMITS) {
                    Checked::Wrong { .. } => evaluated += 1,
                    Checked::Throttled { retry_after_s } => {
                        assert!(retry_after_s > 20 * 3600, "{retry_after_s}")
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(evaluated, 30);
        // A day after the first wrong codes, the email can be tried again.
        assert!(matches!(
            g.check(T0 + DAY_MS + 1, "c39", "wrong", "10.0.0.39", LIMITS),
            Checked::Wrong { .. } | Checked::Expired | Checked::NoChallenge
        ));
    }

    #[test]
    fn one_network_gets_ten_wrong_codes_an_hour_per_email() {
        let mut g = EmailGuard::default();
        let net = "2001:db8::/64";
        let mut evaluated = 0;
        for i in 0..4 {
            let at = T0 + i * SEND_GAP_MS;
            g.send(at, challenge(&format!("c{i}"), "right", at, net))
                .unwrap();
            for _ in 0..5 {
                if let Checked::Wrong { .. } = g.check(at, &format!("c{i}"), "x", net, LIMITS) {
                    evaluated += 1;
                }
            }
        }
        assert_eq!(evaluated, 10);
        let late = T0 + 3 * SEND_GAP_MS;
        assert!(matches!(
            g.check(late, "c3", "right", net, LIMITS),
            Checked::Throttled { .. }
        ));
        // Another network's challenge is evaluated.
        g.send(late + 1, challenge("other", "right-o", late, "192.0.2.1"))
            .unwrap();
        assert_eq!(
            g.check(late + 2, "other", "right-o", "192.0.2.1", LIMITS),
            Checked::Verified
        );
    }

    #[test]
    fn unknown_challenges_and_expiry() {
        let mut g = EmailGuard::default();
        assert_eq!(g.check(T0, "nope", "h", "n", LIMITS), Checked::NoChallenge);
        assert!(g.is_empty(), "a miss stores nothing");
        g.send(T0, challenge("c", "h", T0, "n")).unwrap();
        assert_eq!(
            g.check(T0 + CODE_TTL_MS, "c", "h", "n", LIMITS),
            Checked::Expired
        );
        assert_eq!(g.expires_at(), Some(T0 + CODE_TTL_MS + HOUR_MS));
        g.prune(T0 + CODE_TTL_MS + HOUR_MS);
        assert!(g.is_empty());
    }

    #[test]
    fn a_network_is_limited_across_emails() {
        let mut n = NetworkGuard::default();
        for i in 0..30 {
            n.start(T0 + i, 30).unwrap();
        }
        assert_eq!(n.start(T0 + 100, 30), Err(3600));
        n.may_verify(T0, 30).unwrap();
        n.verified(T0);
        assert!(n.failures.is_empty(), "a try that signed in is no failure");
        for _ in 0..30 {
            n.may_verify(T0, 30).unwrap();
        }
        assert!(
            n.may_verify(T0 + 1, 30).is_err(),
            "tries count before they are answered"
        );
        assert!(n.may_verify(T0 + HOUR_MS, 30).is_ok());
        for i in 0..5 {
            n.sign_up(T0 + i, 5).unwrap();
        }
        assert!(n.sign_up(T0 + 10, 5).is_err());
        assert_eq!(n.expires_at(), Some(T0 + 4 + DAY_MS));
        n.prune(T0 + 2 * DAY_MS);
        assert!(n.is_empty());
    }
}
