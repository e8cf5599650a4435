//! Limits on what one result, one batch and one stream may carry. They keep hostile or careless
//! input from costing more than it is worth: returns so large that their squares overflow (and
//! poison every statistic of their arm), batches so large or so spread over tests that one of
//! them holds the ingestion path for seconds.

/// The largest accepted |return| and |metric value| by default: far beyond any real return in
/// any unit (fractions, basis points, dollars), small enough that sums of squares over 10¹⁵
/// results stay finite (10¹⁸·10¹⁵ ≪ 1.8·10³⁰⁸).
pub const DEFAULT_MAX_ABS_VALUE: f64 = 1e9;
/// Records one `IngestResults` batch may hold by default.
pub const DEFAULT_MAX_BATCH_RECORDS: usize = 100_000;
/// Distinct tests one batch may name by default.
pub const DEFAULT_MAX_BATCH_TESTS: usize = 10_000;

/// What ingestion accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IngestLimits {
    /// Largest accepted magnitude of a return or a metric value; a record above it is rejected
    /// (INVALID_ARGUMENT) and nothing of it is applied.
    pub max_abs_value: f64,
    /// Most records in one batch; a larger batch is refused whole (RESOURCE_EXHAUSTED).
    pub max_batch_records: usize,
    /// Most distinct test ids in one batch; more are refused whole (RESOURCE_EXHAUSTED).
    pub max_batch_tests: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_abs_value: DEFAULT_MAX_ABS_VALUE,
            max_batch_records: DEFAULT_MAX_BATCH_RECORDS,
            max_batch_tests: DEFAULT_MAX_BATCH_TESTS,
        }
    }
}
