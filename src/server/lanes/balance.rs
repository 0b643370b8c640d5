//! When to open another HTTP lane or close one, from what the lanes and the CPUs did over the
//! last interval; how that is measured is `usage`'s, moving the connections is the lanes'.
//!
//! Why lanes open and close: a lane's fixed costs come per round of its runtime — waking from
//! `epoll_wait` (a context switch), the round's ONNX Runtime run for a light model — and are
//! shared by the requests of the round. Lanes spread over CPUs that something else keeps busy
//! (a load generator beside the server, the node's other pods) run small rounds: they sleep,
//! wait for a CPU, and pay those costs for a few requests each. With 1-row requests from `wrk`
//! beside the server on 2 CPUs, two lanes took 14.5 µs of CPU a request and served 70k
//! requests/s; one lane took 10.2 µs and served 97k. So the server starts with one lane open,
//! opens another only when the open ones are full and a CPU has time left for it, and closes
//! one when the load would fit in fewer, or when the lanes wait for CPUs more than for work.
//!
//! Closing on contention can be wrong where the load needs the lanes after all; then the lane
//! opens again on the next full interval, and contention is not trusted again for longer each
//! time (from 5 s to 2 min), so the lanes cannot swing back and forth.

/// What one open lane did over the interval, as shares of it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LaneUse {
    /// On a CPU.
    pub(crate) running: f64,
    /// Ready to run, waiting for a CPU.
    pub(crate) waiting: f64,
}

/// A lane is full from this share of the interval on a CPU.
const FULL: f64 = 0.85;
/// Another lane opens only where this much CPU went unused, in CPUs.
const SPARE: f64 = 0.5;
/// A lane closes when the open lanes' CPU would fit in one fewer at this share each.
const LIGHT: f64 = 0.5;
/// Lanes that each waited this share for a CPU ...
const CROWDED_WAIT: f64 = 0.15;
/// ... while none ran more than this share are crowded: a lane closes.
const CROWDED_RUN: f64 = 0.7;
/// Intervals left alone after a change: their figures mix the lanes before and after it.
const SETTLE: u32 = 1;
/// Intervals contention is first not trusted for after a close for it proved wrong, and at most.
const DOUBT_FIRST: u32 = 5;
const DOUBT_MOST: u32 = 120;
/// A lane opening within this many intervals of a close for contention proves that close wrong.
const PROOF: u32 = 10;

/// A change to the number of open lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Open,
    Close,
}

/// The number of open lanes, and what it remembers to decide the next change.
#[derive(Debug)]
pub(crate) struct Policy {
    lanes: usize,
    open: usize,
    /// Intervals seen.
    now: u32,
    /// No change before this interval.
    settled_at: u32,
    /// Contention closes no lane before this interval.
    trusted_at: u32,
    /// How long contention is not trusted after its next close proves wrong.
    doubt: u32,
    /// When a lane was last closed for contention.
    crowded_close: Option<u32>,
}

impl Policy {
    /// `lanes` lanes, one of them open.
    pub(crate) fn new(lanes: usize) -> Policy {
        Policy {
            lanes: lanes.max(1),
            open: 1,
            now: 0,
            settled_at: 0,
            trusted_at: 0,
            doubt: DOUBT_FIRST,
            crowded_close: None,
        }
    }

    pub(crate) fn open(&self) -> usize {
        self.open
    }

    /// Takes one interval's figures: `open` has what each open lane did, `spare` the CPUs'
    /// worth of time nobody used. Returns the change to make, already counted in `open()`.
    pub(crate) fn observe(&mut self, open: &[LaneUse], spare: f64) -> Option<Change> {
        self.now += 1;
        if self.now < self.settled_at || open.len() != self.open {
            return None;
        }
        let change = self.decide(open, spare)?;
        match change {
            Change::Open => {
                self.open += 1;
                if let Some(closed) = self.crowded_close.take()
                    && self.now - closed <= PROOF
                {
                    self.trusted_at = self.now + self.doubt;
                    self.doubt = (self.doubt * 2).min(DOUBT_MOST);
                }
            }
            Change::Close => self.open -= 1,
        }
        self.settled_at = self.now + SETTLE + 1;
        Some(change)
    }

    fn decide(&mut self, open: &[LaneUse], spare: f64) -> Option<Change> {
        let busiest = open.iter().map(|l| l.running).fold(0.0, f64::max);
        if self.open < self.lanes && busiest >= FULL && spare >= SPARE {
            return Some(Change::Open);
        }
        if self.open == 1 {
            return None;
        }
        let running: f64 = open.iter().map(|l| l.running).sum();
        if running <= LIGHT * (self.open - 1) as f64 {
            return Some(Change::Close);
        }
        let crowded = open
            .iter()
            .all(|l| l.waiting >= CROWDED_WAIT && l.running <= CROWDED_RUN);
        if crowded && self.now >= self.trusted_at {
            self.crowded_close = Some(self.now);
            return Some(Change::Close);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(running: f64, waiting: f64) -> LaneUse {
        LaneUse { running, waiting }
    }

    /// Feeds `policy` the same figures for every open lane for `intervals` intervals.
    fn run(policy: &mut Policy, intervals: u32, each: LaneUse, spare: f64) -> Vec<Change> {
        (0..intervals)
            .filter_map(|_| policy.observe(&vec![each; policy.open()], spare))
            .collect()
    }

    #[test]
    fn a_full_lane_opens_another_only_where_a_cpu_has_time_for_it() {
        // 64-row requests beside wrk on 2 CPUs: one lane full, three quarters of a CPU unused.
        let mut policy = Policy::new(2);
        assert_eq!(run(&mut policy, 1, lane(1.0, 0.0), 0.75), [Change::Open]);
        // Two lanes, both busy, the CPUs full: they stay.
        assert_eq!(run(&mut policy, 20, lane(0.8, 0.15), 0.06), []);
        assert_eq!(policy.open(), 2);

        // 1-row requests beside wrk: the one lane is full, the CPUs too.
        let mut policy = Policy::new(2);
        assert_eq!(run(&mut policy, 20, lane(0.99, 0.0), 0.09), []);
        assert_eq!(policy.open(), 1);
        // Never more lanes than there are.
        let mut policy = Policy::new(1);
        assert_eq!(run(&mut policy, 5, lane(1.0, 0.0), 2.0), []);
    }

    #[test]
    fn lanes_close_when_the_load_fits_in_fewer() {
        let mut policy = Policy::new(4);
        assert_eq!(
            run(&mut policy, 9, lane(0.95, 0.0), 3.0),
            [Change::Open, Change::Open, Change::Open]
        );
        assert_eq!(policy.open(), 4);
        // Settling: a change at most every other interval.
        assert_eq!(
            run(&mut policy, 9, lane(0.1, 0.0), 3.5),
            [Change::Close, Change::Close, Change::Close]
        );
        assert_eq!(policy.open(), 1);
    }

    #[test]
    fn crowded_lanes_close_and_contention_is_doubted_when_that_proves_wrong() {
        // 1-row requests beside wrk on two open lanes: each runs half the time and waits a fifth.
        let mut policy = Policy::new(2);
        run(&mut policy, 1, lane(1.0, 0.0), 1.0);
        assert_eq!(policy.open(), 2);
        assert_eq!(run(&mut policy, 2, lane(0.5, 0.2), 0.3), [Change::Close]);
        // Where the one lane is then full and a CPU idle, it was wrong: the lane opens again (once
        // the close has settled) ...
        let full = lane(1.0, 0.0);
        assert_eq!(run(&mut policy, 1, full, 0.8), []);
        assert_eq!(run(&mut policy, 1, full, 0.8), [Change::Open]);
        // ... and the same crowding closes nothing for DOUBT_FIRST intervals from the opening.
        let crowded = lane(0.5, 0.2);
        assert_eq!(run(&mut policy, DOUBT_FIRST - 1, crowded, 0.3), []);
        assert_eq!(run(&mut policy, 1, crowded, 0.3), [Change::Close]);
        // Wrong again: doubted twice as long.
        assert_eq!(run(&mut policy, 1, full, 0.8), []);
        assert_eq!(run(&mut policy, 1, full, 0.8), [Change::Open]);
        assert_eq!(run(&mut policy, 2 * DOUBT_FIRST - 1, crowded, 0.3), []);
        assert_eq!(run(&mut policy, 1, crowded, 0.3), [Change::Close]);
        assert_eq!(policy.open(), 1);
    }

    #[test]
    fn a_lane_that_is_not_crowded_stays() {
        let mut policy = Policy::new(2);
        run(&mut policy, 1, lane(1.0, 0.0), 1.0);
        // Waiting, but one lane runs most of the time.
        let figures = [lane(0.84, 0.09), lane(0.73, 0.21)];
        assert!((0..10).all(|_| policy.observe(&figures, 0.06).is_none()));
        // Figures of another number of lanes than are open are not taken.
        assert_eq!(policy.observe(&[lane(0.1, 0.0)], 1.0), None);
        assert_eq!(policy.open(), 2);
    }
}
