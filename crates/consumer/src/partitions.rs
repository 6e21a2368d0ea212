//! Per-partition progress of the consumer, and the loop's decisions on it.
//!
//! The loop asks questions ([`Partitions::should_take`], [`Partitions::all_done`])
//! and reports events (a record taken, the end of a partition reached, a batch
//! committed, an assignment, a rewind); the answers follow from this state alone.
//! No Kafka client type appears here, so every rule is unit-tested.
//!
//! Words: the *stored* offset is the next offset PostgreSQL holds for a partition
//! (what a restart resumes from); *taken* is the next offset after the last record
//! put into a batch, not yet stored.

use std::collections::{BTreeMap, HashMap};

/// One owned partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The next offset PostgreSQL holds, as far as this consumer knows (`None`:
    /// nothing stored yet).
    pub stored: Option<i64>,
    /// The next offset after the last record taken since the partition was last
    /// positioned (assignment or rewind); `None`: nothing taken since.
    pub taken: Option<i64>,
    /// The broker said "end of partition" after the last record taken.
    pub at_end: bool,
    /// `--available-now`: the high watermark first seen, which the run must reach.
    pub target: Option<i64>,
}

/// Where a partition's position lies in its log, as the broker reports the log's
/// start (`low`) and end (`high`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InLog {
    /// `low <= position <= high`: reading can go on from there.
    Inside,
    /// The records from the position up to `low` are gone (retention deleted
    /// them before they were read): `lost` records.
    BeforeStart { lost: i64 },
    /// The position lies `by` records past the end: the log is not the one the
    /// offsets were stored for (topic recreated, data lost, offsets restored).
    PastEnd { by: i64 },
}

/// Locates `position` in the log `low..=high`.
pub fn locate(position: i64, low: i64, high: i64) -> InLog {
    if position > high {
        InLog::PastEnd {
            by: position - high,
        }
    } else if position < low {
        InLog::BeforeStart {
            lost: low - position,
        }
    } else {
        InLog::Inside
    }
}

/// The partitions this consumer owns and how far each got.
#[derive(Debug, Clone, Default)]
pub struct Partitions {
    /// The assignment generation this state belongs to (0: none yet).
    generation: u64,
    owned: BTreeMap<i32, Progress>,
}

impl Partitions {
    /// The generation of the assignment this state describes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The owned partitions, in order.
    pub fn owned(&self) -> Vec<i32> {
        self.owned.keys().copied().collect()
    }

    /// Whether `partition` is owned now.
    pub fn owns(&self, partition: i32) -> bool {
        self.owned.contains_key(&partition)
    }

    /// A partition's progress, if owned.
    #[cfg(test)]
    pub fn get(&self, partition: i32) -> Option<&Progress> {
        self.owned.get(&partition)
    }

    /// The offset PostgreSQL holds for an owned partition, as far as we know.
    pub fn stored(&self, partition: i32) -> Option<i64> {
        self.owned.get(&partition).and_then(|p| p.stored)
    }

    /// Where reading of a partition goes on: after the last record taken, else at
    /// the stored offset (`None`: nothing stored, nothing taken).
    pub fn position(&self, partition: i32) -> Option<i64> {
        self.owned
            .get(&partition)
            .and_then(|p| p.taken.or(p.stored))
    }

    /// One partition was moved to `position` (an offset out of the log, resolved):
    /// reading goes on from there, and `stored` is what PostgreSQL now holds.
    pub fn on_moved(&mut self, partition: i32, stored: Option<i64>, position: i64) {
        if let Some(p) = self.owned.get_mut(&partition) {
            p.stored = stored;
            p.taken = (Some(position) != stored).then_some(position);
            p.at_end = false;
        }
    }

    /// A new assignment replaces everything: what was read under the previous one
    /// is void, and each partition starts at the offset PostgreSQL held when it
    /// was assigned.
    pub fn on_assignment(&mut self, generation: u64, stored: &HashMap<i32, Option<i64>>) {
        self.generation = generation;
        self.owned = stored
            .iter()
            .map(|(p, s)| {
                let progress = Progress {
                    stored: *s,
                    ..Progress::default()
                };
                (*p, progress)
            })
            .collect();
    }

    /// Whether a record belongs in the batch: its partition is owned, and it is
    /// neither stored already nor taken already (a replay after a seek, or a
    /// duplicate delivery after a rebalance).
    pub fn should_take(&self, partition: i32, offset: i64) -> bool {
        let Some(p) = self.owned.get(&partition) else {
            return false; // not ours (any more): its owner reads it
        };
        p.stored.max(p.taken).is_none_or(|floor| offset >= floor)
    }

    /// A record was put into the batch.
    pub fn on_taken(&mut self, partition: i32, offset: i64) {
        if let Some(p) = self.owned.get_mut(&partition) {
            p.taken = Some(offset + 1);
            p.at_end = false;
        }
    }

    /// The broker reported the end of a partition.
    pub fn on_end(&mut self, partition: i32) {
        if let Some(p) = self.owned.get_mut(&partition) {
            p.at_end = true;
        }
    }

    /// A batch committed: each partition it covered is now stored up to `next`.
    pub fn on_committed(&mut self, advanced: impl IntoIterator<Item = (i32, i64)>) {
        for (partition, next) in advanced {
            if let Some(p) = self.owned.get_mut(&partition) {
                p.stored = Some(next);
            }
        }
    }

    /// The partitions were sought back to what PostgreSQL holds (`stored`; a
    /// partition missing there has nothing stored): records will come again from
    /// there, so nothing counts as taken, and an end of partition seen before the
    /// seek says nothing about the records now ahead.
    pub fn on_rewind(&mut self, stored: &HashMap<i32, i64>) {
        for (partition, p) in &mut self.owned {
            p.stored = stored.get(partition).copied();
            p.taken = None;
            p.at_end = false;
        }
    }

    /// `--available-now`: a partition has been read up to the high watermark first
    /// seen for it (a target known, and reached).
    pub fn reached_target(&self, partition: i32) -> bool {
        self.owned.get(&partition).is_some_and(|p| {
            p.target
                .zip(p.taken.or(p.stored))
                .is_some_and(|(target, position)| position >= target)
        })
    }

    /// `--available-now`: every owned partition has been read up to the high
    /// watermark first seen for it. `watermarks` gives a partition's (low, high)
    /// as last seen in a fetch response; a partition without one is not done.
    /// With no assignment yet, or an empty one, nothing is done.
    pub fn all_done(&mut self, mut watermarks: impl FnMut(i32) -> Option<(i64, i64)>) -> bool {
        // No assignment yet, or an empty one (other members hold every partition):
        // nothing was read, so nothing is done.
        if self.generation == 0 || self.owned.is_empty() {
            return false;
        }
        self.owned.iter_mut().all(|(partition, p)| {
            // Short of a target already known, with no end of partition since: not
            // done, whatever the log says now. The loop asks after every burst of
            // records, and asking librdkafka for the watermarks takes its locks.
            if let (false, Some(target), Some(position)) =
                (p.at_end, p.target, p.taken.or(p.stored))
                && position < target
            {
                return false;
            }
            let Some((low, high)) = watermarks(*partition) else {
                return false;
            };
            let target = *p.target.get_or_insert(high);
            // The end of partition also covers trailing transaction markers, which
            // are never delivered.
            match p.taken.or(p.stored) {
                // Past the log's end is not "done": it is a fault, which the
                // broker's out-of-range answer brings to `gaps::resolve`.
                Some(position) if position > high => false,
                _ if p.at_end => true,
                Some(position) => position >= target,
                // Nothing stored and nothing read: done only if the partition is empty.
                None => low >= target,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(stored: &[(i32, Option<i64>)]) -> Partitions {
        let mut p = Partitions::default();
        p.on_assignment(1, &stored.iter().copied().collect());
        p
    }

    #[test]
    fn records_below_the_stored_or_taken_offset_are_skipped() {
        let mut p = assigned(&[(0, Some(10)), (1, None)]);
        assert!(!p.should_take(0, 9), "already stored");
        assert!(p.should_take(0, 10));
        assert!(p.should_take(1, 0), "nothing stored: everything is new");
        p.on_taken(0, 10);
        assert!(!p.should_take(0, 10), "taken into this batch already");
        assert!(p.should_take(0, 11));
        assert!(!p.should_take(7, 0), "not owned");
    }

    #[test]
    fn an_assignment_forgets_everything_read_under_the_previous_one() {
        let mut p = assigned(&[(0, Some(10)), (1, Some(5))]);
        p.on_taken(0, 20);
        p.on_end(1);
        p.on_assignment(2, &[(1, Some(7))].into_iter().collect());
        assert_eq!(p.generation(), 2);
        assert!(!p.owns(0));
        assert_eq!(
            p.get(1),
            Some(&Progress {
                stored: Some(7),
                ..Progress::default()
            })
        );
    }

    #[test]
    fn a_commit_moves_the_stored_offset_of_owned_partitions_only() {
        let mut p = assigned(&[(0, Some(10))]);
        p.on_committed([(0, 15), (3, 99)]);
        assert_eq!(p.stored(0), Some(15));
        assert!(!p.owns(3));
    }

    #[test]
    fn a_rewind_clears_what_was_taken_and_the_end_of_partition() {
        let mut p = assigned(&[(0, Some(10)), (1, None)]);
        p.on_taken(0, 30);
        p.on_end(0);
        p.on_rewind(&[(0, 12)].into_iter().collect());
        assert_eq!(
            p.get(0),
            Some(&Progress {
                stored: Some(12),
                ..Progress::default()
            })
        );
        assert!(
            p.should_take(0, 12),
            "records after the stored offset come again"
        );
        // After the rewind the end seen earlier no longer counts: not done until
        // the records up to the watermark are read again.
        assert!(!p.all_done(|_| Some((0, 30))));
    }

    #[test]
    fn available_now_is_done_when_every_partition_reached_its_first_watermark() {
        let mut p = assigned(&[(0, Some(10)), (1, None)]);
        assert!(!p.all_done(|_| None), "no watermark yet");
        assert!(!p.all_done(|_| Some((0, 20))));
        p.on_taken(0, 19);
        assert!(!p.all_done(|_| Some((0, 20))), "partition 1 not read");
        p.on_end(1);
        // The target stays the first watermark seen, even as the log grows.
        assert!(p.all_done(|_| Some((0, 50))));
    }

    #[test]
    fn a_partition_short_of_its_known_target_is_not_done_without_asking_the_log() {
        let mut p = assigned(&[(0, Some(10))]);
        assert!(!p.all_done(|_| Some((0, 20))), "target 20 learnt");
        p.on_taken(0, 15);
        let mut asked = 0;
        assert!(!p.all_done(|_| {
            asked += 1;
            Some((0, 20))
        }));
        assert_eq!(asked, 0, "short of the known target: the log is not asked");
        assert!(!p.reached_target(0));
        p.on_taken(0, 19);
        assert!(p.reached_target(0), "20 is the target");
        assert!(!p.reached_target(1), "not owned");
        p.on_end(0);
        assert!(p.all_done(|_| {
            asked += 1;
            Some((0, 20))
        }));
        assert_eq!(asked, 1, "an end of partition is checked against the log");
        p.on_taken(0, 25);
        assert!(
            !p.all_done(|_| Some((0, 20))),
            "past the log's end: a fault"
        );
    }

    #[test]
    fn positions_are_located_against_the_log() {
        assert_eq!(locate(10, 0, 20), InLog::Inside);
        assert_eq!(
            locate(20, 0, 20),
            InLog::Inside,
            "at the end: nothing new yet"
        );
        assert_eq!(locate(0, 0, 0), InLog::Inside, "empty log");
        assert_eq!(locate(606, 0, 54), InLog::PastEnd { by: 552 });
        assert_eq!(locate(5, 40, 90), InLog::BeforeStart { lost: 35 });
    }

    #[test]
    fn a_partition_moved_past_a_gap_takes_records_from_the_new_position_only() {
        let mut p = assigned(&[(0, Some(5))]);
        // Retention: the stored offset stays (the next commit moves it), reading
        // goes on at the log start.
        p.on_moved(0, Some(5), 40);
        assert_eq!(p.position(0), Some(40));
        assert!(!p.should_take(0, 39));
        assert!(p.should_take(0, 40));
        // Past the end, reset: PostgreSQL now holds the new position.
        p.on_moved(0, Some(0), 0);
        assert_eq!(p.get(0).map(|g| g.taken), Some(None));
        assert!(p.should_take(0, 0));
    }

    #[test]
    fn a_position_past_the_log_end_is_never_done() {
        // The stored offsets of a topic's previous life: 606 against a new log of 30.
        let mut p = assigned(&[(0, Some(606))]);
        assert!(!p.all_done(|_| Some((0, 30))));
        p.on_end(0);
        assert!(!p.all_done(|_| Some((0, 30))));
    }

    #[test]
    fn an_empty_partition_is_done_and_no_assignment_is_never_done() {
        let mut p = assigned(&[(0, None)]);
        assert!(p.all_done(|_| Some((4, 4))), "empty (log start = end)");
        let mut none = Partitions::default();
        assert!(!none.all_done(|_| Some((0, 0))));
        let mut empty = assigned(&[]);
        assert!(!empty.all_done(|_| Some((0, 0))), "assigned nothing");
    }
}
