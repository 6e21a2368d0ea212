//! `is_latest(key, rank, ...) OVER ()`: whether a row is the one its key keeps.
//!
//! "The latest row per id" is the default query's whole job besides the casts. In
//! plain SQL it is `row_number() OVER (PARTITION BY id ORDER BY rank DESC) = 1`, or a
//! sort of the batch by id and rank with a `lag(id)`: both sort, and the sort's
//! comparisons of text ids, the window's per-row values and the join that brought
//! the kept rows' wide columns back were most of the transform's cost (the join
//! alone a tenth of the consumer's CPU in issue 14's eighth profile). This window
//! function answers the same question with one hash of the key per row, in the
//! batch's own order, so the query keeps rows with a filter, which copies nothing
//! when every row is kept (ids repeat in few batches).
//!
//! The row kept for a key is the one whose ranks are the highest, compared left to
//! right as `ORDER BY rank1 DESC, rank2 DESC, ...` compares them (a null rank below
//! every value); of rows equal in every rank, the last one. A row whose key is null
//! is never kept.

use std::hash::Hash;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::{HashMap as FastMap, Result, plan_err};
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{
    PartitionEvaluator, Signature, Volatility, WindowUDF, WindowUDFImpl,
};

/// The function's name in SQL.
pub const NAME: &str = "is_latest";

/// The window function, to register with a session.
pub fn is_latest() -> WindowUDF {
    WindowUDF::from(IsLatest {
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct IsLatest {
    signature: Signature,
}

impl WindowUDFImpl for IsLatest {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn partition_evaluator(
        &self,
        _: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(Latest))
    }

    /// Refuses, when the query is planned, a call without a key or with a rank that
    /// has no order.
    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        let Some((key, ranks)) = args.input_fields().split_first() else {
            return plan_err!("{NAME}(key, rank, ...) needs a key");
        };
        let sortable = |f: &FieldRef| SortField::new(f.data_type().clone());
        if !RowConverter::supports_fields(&[sortable(key)]) {
            return plan_err!("{NAME}: a key of type {} is not supported", key.data_type());
        }
        if let Some(rank) = ranks
            .iter()
            .find(|f| !RowConverter::supports_fields(&[sortable(f)]))
        {
            return plan_err!("{NAME}: a rank of type {} has no order", rank.data_type());
        }
        Ok(Field::new(args.name(), DataType::Boolean, false).into())
    }
}

/// Evaluates a whole partition (the batch, with `OVER ()`) at once.
#[derive(Debug)]
struct Latest;

impl PartitionEvaluator for Latest {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let Some((key, ranks)) = values.split_first() else {
            return plan_err!("{NAME}(key, rank, ...) needs a key");
        };
        let ranks = (!ranks.is_empty()).then(|| encoded(ranks)).transpose()?;
        // Row `a` wins over an earlier row `b` of its key with ranks at least as high.
        let wins = |a, b| ranks.as_ref().is_none_or(|r| r.row(a) >= r.row(b));
        let kept = match key.data_type() {
            // Text keys (the usual case) are hashed as they are.
            DataType::Utf8 => {
                let keys = key.as_string::<i32>().iter();
                mask_of(num_rows, highest_ranked(keys, wins).into_values())
            }
            _ => {
                let rows = encoded(std::slice::from_ref(key))?;
                let keys = (0..num_rows).map(|i| key.is_valid(i).then(|| rows.row(i)));
                mask_of(num_rows, highest_ranked(keys, wins).into_values())
            }
        };
        Ok(Arc::new(kept))
    }
}

/// True at the rows kept, false elsewhere.
fn mask_of(num_rows: usize, kept: impl Iterator<Item = usize>) -> BooleanArray {
    let mut mask = BooleanBufferBuilder::new(num_rows);
    mask.append_n(num_rows, false);
    for row in kept {
        mask.set_bit(row, true);
    }
    BooleanArray::new(mask.finish(), None)
}

/// Columns in Arrow's row format, whose rows compare (and hash) as their values do.
fn encoded(columns: &[ArrayRef]) -> Result<Rows> {
    let fields = columns
        .iter()
        .map(|c| SortField::new(c.data_type().clone()))
        .collect();
    Ok(RowConverter::new(fields)?.convert_columns(columns)?)
}

/// Key -> the row that wins among the rows with that key (`None` keys left out):
/// `wins(a, b)` says whether row `a` wins over the earlier row `b`. Shared with
/// `dead_letter::Provenance`, which must name the row this keeps.
pub(crate) fn highest_ranked<K: Hash + Eq>(
    keys: impl Iterator<Item = Option<K>>,
    wins: impl Fn(usize, usize) -> bool,
) -> FastMap<K, usize> {
    // Keys are the batch's own data, hashed once per record: a fast hash (the one
    // DataFusion's hash tables use), not SipHash.
    let (lower, _) = keys.size_hint();
    let mut map = FastMap::with_capacity(lower);
    for (i, k) in keys.enumerate() {
        let Some(k) = k else { continue };
        // One hash per record: the entry, not a lookup and then an insert.
        map.entry(k)
            .and_modify(|j| {
                if wins(i, *j) {
                    *j = i;
                }
            })
            .or_insert(i);
    }
    map
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int32Array, Int64Array, StringArray};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::prelude::SessionContext;

    use super::*;

    async fn kept(sql: &str, columns: Vec<(&str, ArrayRef)>) -> Result<Vec<bool>> {
        let ctx = SessionContext::new();
        ctx.register_udwf(is_latest());
        ctx.register_batch("t", RecordBatch::try_from_iter(columns)?)?;
        let out = ctx.sql(sql).await?.collect().await?;
        let mut mask = Vec::new();
        for b in out {
            mask.extend(b.column(0).as_boolean().iter().map(|v| v.unwrap_or(false)));
        }
        Ok(mask)
    }

    fn text(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(values.to_vec()))
    }

    #[tokio::test]
    async fn keeps_the_highest_rank_per_key_compared_left_to_right() {
        let key = text(&[Some("a"), Some("b"), Some("a"), None, Some("a"), Some("b")]);
        let major: ArrayRef = Arc::new(Int32Array::from(vec![1, 0, 2, 9, 2, 0]));
        let minor: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(9),
            Some(5),
            None,
            Some(1),
            Some(3),
            Some(4),
        ]));
        let sql = "SELECT is_latest(k, major, minor) OVER () FROM t";
        let mask = kept(sql, vec![("k", key), ("major", major), ("minor", minor)])
            .await
            .unwrap();
        // a: (1, 9), (2, null), (2, 3): the null minor is lowest. b: (0, 5) beats (0, 4).
        // The null key is never kept.
        assert_eq!(mask, [false, true, false, false, true, false]);
    }

    #[tokio::test]
    async fn of_equal_ranks_or_none_the_last_row_wins() {
        let key = text(&[Some("a"), Some("a"), Some("b")]);
        let rank: ArrayRef = Arc::new(Int32Array::from(vec![1, 1, 0]));
        let columns = || vec![("k", key.clone()), ("r", rank.clone())];
        let ranked = kept("SELECT is_latest(k, r) OVER () FROM t", columns()).await;
        assert_eq!(ranked.unwrap(), [false, true, true]);
        let unranked = kept("SELECT is_latest(k) OVER () FROM t", columns()).await;
        assert_eq!(unranked.unwrap(), [false, true, true]);
    }

    #[tokio::test]
    async fn keys_other_than_text_go_through_the_row_format() {
        let key: ArrayRef = Arc::new(Int64Array::from(vec![Some(7), None, Some(7), Some(8)]));
        let rank: ArrayRef = Arc::new(Int32Array::from(vec![5, 9, 4, 1]));
        let mask = kept(
            "SELECT is_latest(k, r) OVER () FROM t",
            vec![("k", key), ("r", rank)],
        );
        assert_eq!(mask.await.unwrap(), [true, false, false, true]);
    }

    #[tokio::test]
    async fn partitions_are_ranked_apart() {
        let key = text(&[Some("a"), Some("a"), Some("a")]);
        let group = text(&[Some("x"), Some("y"), Some("x")]);
        let rank: ArrayRef = Arc::new(Int32Array::from(vec![2, 1, 1]));
        let sql = "SELECT is_latest(k, r) OVER (PARTITION BY g) AS l, r FROM t ORDER BY r, l";
        let mask = kept(sql, vec![("k", key), ("g", group), ("r", rank)]);
        // x keeps rank 2, y its only row.
        assert_eq!(mask.await.unwrap(), [false, true, true]);
    }

    #[tokio::test]
    async fn a_call_without_a_key_is_refused_when_planned() {
        let err = kept(
            "SELECT is_latest() OVER () FROM t",
            vec![("k", text(&[Some("a")]))],
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains(NAME), "{err}");
    }
}
