/* Parameter structs of the AdaFace kernels: one per launch family.
 *
 * Plain C with fixed-width fields only, so that the same bytes are passed by
 * value to a CUDA launch and by pointer to a simulated launch (`*_sim`).
 * Device addresses are uint64_t: a CUdeviceptr on the GPU, a host pointer in
 * the simulator. Mirrored into Rust by bindgen (src/kernel_params.rs).
 *
 * A step is: stats -> forward -> combine [-> backward -> dx_finish].
 * Every kernel after `stats` reads the step record's error key first and
 * exits when an error has been recorded, so an error writes nothing else.
 */
#ifndef ADAFACE_PARAMS_H
#define ADAFACE_PARAMS_H

/* Tile sizes shared by the kernels and the Rust launch plan. */
enum AdafaceTileSizes {
    /* Threads per block of every kernel. */
    ADAFACE_THREADS = 256,
    /* Rows (batch) per tile of the logit product. */
    ADAFACE_TILE_ROWS = 32,
    /* Classes per tile of the logit product. */
    ADAFACE_TILE_CLASSES = 64,
    /* Depth (embedding dimension) per staged tile. */
    ADAFACE_TILE_DEPTH = 32,
    /* Flash kernels (bf16 and f16, tensor cores; kernels/flash/): rows and
     * classes per tile, the largest embedding dimension they take (the
     * accumulators of a 64 x D output tile live in registers), and the
     * padding, in elements, of each staged row in shared memory. */
    ADAFACE_FLASH_ROWS = 64,
    ADAFACE_FLASH_CLASSES = 64,
    ADAFACE_FLASH_MAX_DIM = 512,
    ADAFACE_FLASH_ROW_PAD = 8
};

/* Error kinds, in the order the host reports them (lower wins). The error
 * key is (kind << 56) | detail, combined with an atomic minimum, so the
 * record always holds the error the host-side checks would report first. */
enum AdafaceErrorKind {
    ADAFACE_ERR_LABEL = 1,            /* detail: row; value: the label */
    ADAFACE_ERR_NONFINITE_X = 2,      /* detail: flat index into x */
    ADAFACE_ERR_NONFINITE_W = 3,      /* detail: flat index into W */
    ADAFACE_ERR_ROWNORM_X = 4,        /* detail: (row << 1) | overflow */
    ADAFACE_ERR_ROWNORM_W = 5,        /* detail: (row << 1) | overflow */
    ADAFACE_ERR_SHARD = 6             /* class-sharded step: the row's label is
                                       * held by no shard or by several; detail: row */
};

/* How the stats kernel derives each row's margin (AdafaceStatsParams::kind).
 * Every policy's target logit is s (cos(clip(m1 theta + a_i)) - b_i) (or
 * SphereFace's, m1 < 0); the kinds differ in where a_i and b_i come from
 * and in what else a row carries. */
enum AdafaceMarginKind {
    /* (a_i, b_i) affine in the margin scaler z_i: AdaFace, ArcFace, CosFace,
     * the combined margin, SphereFace. */
    ADAFACE_MARGIN_AFFINE = 0,
    /* CurricularFace: a_i = a0 (ArcFace); every negative cosine above the
     * row's threshold cos(theta_y + a0) becomes c (t + c), t the EMA of the
     * batch's mean target cosine (record->state_t, detached). */
    ADAFACE_MARGIN_CURRICULAR = 1,
    /* MagFace: a_i = m(||x_i||) from the norm bounds; each row adds the
     * regulariser lambda_g g(||x_i||) to its loss, and its gradient reaches
     * ||x_i|| through m and g (the radial term of dx_finish). */
    ADAFACE_MARGIN_MAGFACE = 2
};

/* Results of one step, written on the device, read by the host in one copy. */
typedef struct AdafaceStepRecord {
    /* All ones: no error. Otherwise the key described above. */
    uint64_t error_key;
    /* The offending label for ADAFACE_ERR_LABEL. */
    int64_t error_value;
    /* Mean loss over the batch. */
    double loss;
    /* Mean and unbiased std of this batch's clipped norms (std -1: B = 1, none). */
    double norm_mean;
    double norm_std;
    /* EMA state after this step (committed to the state buffer only when
     * the step asked for it and no error was recorded). */
    double state_mean;
    double state_std;
    /* Blocks of the stats kernel that have finished their rows; the last
     * one computes the statistics and sets it back to 0 (0 between steps). */
    uint32_t stats_arrivals;
    uint32_t reserved;
    /* CurricularFace's t after this step's update (the value its negatives
     * use; committed with the EMA state). Other policies: t carried
     * unchanged, or 0 when the caller keeps none. */
    double state_t;
} AdafaceStepRecord;

/* Norm statistics: any grid (one warp per row), the last block to finish
 * validates labels and x and computes the batch statistics, the updated EMA
 * state and the per-row margin terms. */
typedef struct AdafaceStatsParams {
    uint64_t x;            /* const T[B * D] */
    uint64_t labels;       /* const int32 or int64 [B] */
    uint64_t state;        /* const double[2]: EMA state before the step */
    uint64_t record;       /* AdafaceStepRecord*, its error set by this kernel */
    uint64_t row_norm;     /* float[B]: ||x_i|| */
    uint64_t row_a;        /* float[B]: angular offset a_i */
    uint64_t row_b;        /* float[B]: additive offset b_i */
    uint64_t row_z;        /* float[B]: margin scaler z_i */
    uint64_t w;            /* const T[C * D]: read for CurricularFace's target
                            * cosines only */
    uint64_t curricular_t; /* const double*: t before the step, or 0 (none
                            * kept: record->state_t = 0; not CurricularFace) */
    uint64_t row_thr;      /* float[B]: CurricularFace's threshold cos(theta_y
                            * + a0), +inf for the other kinds */
    uint64_t row_mag;      /* float[3 * B]: MagFace's [dm/d||x|| | lambda_g g
                            * | lambda_g dg/d||x||], written for MagFace only */
    int64_t batch;
    int64_t dim;
    int64_t classes;
    int64_t kind;          /* AdafaceMarginKind */
    double t_alpha;
    double eps;
    double clip_min;
    double clip_max;
    double h;
    /* (a_i, b_i) = (a0 + a1 z_i, b0 + b1 z_i): the affine kinds and
     * CurricularFace (a0 its margin). */
    double a0;
    double a1;
    double b0;
    double b1;
    /* MagFace: norm bounds, margins at the bounds, regulariser weight. */
    double mag_l_a;
    double mag_u_a;
    double mag_l_m;
    double mag_u_m;
    double mag_lambda_g;
} AdafaceStatsParams;

/* Shared by the forward and backward tile kernels. */
typedef struct AdafaceTileParams {
    uint64_t x;            /* const T[B * D] */
    uint64_t w;            /* const T[C * D] */
    uint64_t labels;       /* const int32 or int64 [B] */
    uint64_t record;       /* AdafaceStepRecord* */
    uint64_t row_norm;     /* const float[B] */
    uint64_t row_a;        /* const float[B] */
    uint64_t row_b;        /* const float[B] */
    uint64_t class_norm;   /* float[C]: written by the forward, read by the backward */
    uint64_t partial_max;  /* float[splits * B]: forward running max per split */
    uint64_t partial_sum;  /* float[splits * B]: forward running sum-exp per split */
    uint64_t target_logit; /* float[B]: forward writes the margin target logit */
    uint64_t target_cos;   /* float[B]: forward writes the clamped target cosine */
    uint64_t lse;          /* const float[B]: backward reads the log-sum-exp */
    uint64_t dx_partial;   /* float[splits * B * D]: backward's per-split gx
                            * (flash: the forward's per-split unnormalised gx) */
    uint64_t dw;           /* float[C * D]: backward writes dW */
    uint64_t target_dlogit;/* float[B]: flash forward writes dlogit / ||w_y|| of the target */
    uint64_t dx;           /* float[B * D]: flash dx_finish writes dX */
    uint64_t row_thr;      /* const float[B]: CurricularFace's thresholds
                            * (+inf: no negative is modulated) */
    uint64_t row_radial;   /* const float[B]: flash dx_finish adds
                            * row_radial[i] x_i / ||x_i|| (MagFace); 0: none */
    int64_t batch;
    int64_t dim;
    int64_t classes;
    /* Class tiles are dealt to splits round-robin: split k owns tiles
     * k, k + splits, ... (grid x of the forward and of the backward). */
    int64_t splits;
    /* Global index of W's first class: a row's target is class
     * label - class_offset when that lies in [0, classes), else the row has
     * no target in W (a class-sharded step, src/shard). 0 when W holds every
     * class, the unsharded step. */
    int64_t class_offset;
    float s;
    float eps;
    float m1;
    float inv_batch;
} AdafaceTileParams;

/* Combine: one block. Log-sum-exp per row from the forward partials in
 * split order, the mean loss, and the EMA commit. MagFace (row_mag != 0):
 * each row's loss adds its regulariser, and the row's radial gradient
 * coefficient ((p_y - 1) dlogit/d||x|| + dreg/d||x||) / B goes to row_radial. */
typedef struct AdafaceCombineParams {
    uint64_t record;       /* AdafaceStepRecord* */
    uint64_t state;        /* double[2]: EMA state, updated when commit_state */
    uint64_t partial_max;  /* const float[splits * B] */
    uint64_t partial_sum;  /* const float[splits * B] */
    uint64_t target_logit; /* const float[B] */
    uint64_t lse;          /* float[B] */
    uint64_t sample_loss;  /* float[B] */
    uint64_t curricular_t; /* double*: record->state_t committed here, or 0 */
    uint64_t target_cos;   /* const float[B] (MagFace) */
    uint64_t row_a;        /* const float[B] (MagFace: the margin m(||x_i||)) */
    uint64_t row_mag;      /* const float[3 * B] (see AdafaceStatsParams), or 0 */
    uint64_t row_radial;   /* float[B] (MagFace) */
    int64_t batch;
    int64_t splits;
    uint32_t commit_state;
    uint32_t pad0;
    float s;
    float eps;
} AdafaceCombineParams;

/* dX finish: one block per row. Sums the backward's per-split gx in split
 * order and applies the Jacobian of x -> x / ||x||. */
typedef struct AdafaceDxParams {
    uint64_t x;            /* const T[B * D] */
    uint64_t record;       /* const AdafaceStepRecord* */
    uint64_t row_norm;     /* const float[B] */
    uint64_t dx_partial;   /* const float[splits * B * D] */
    uint64_t dx;           /* float[B * D] */
    uint64_t row_radial;   /* const float[B]: adds row_radial[i] x_i / ||x_i||
                            * (MagFace); 0: none */
    int64_t batch;
    int64_t dim;
    int64_t splits;
} AdafaceDxParams;

/* Row statistics of a class-sharded step (kernels/shard.cu, one
 * block; src/shard/kernels.rs). `rows` is float[5 * B]:
 * [max | sum-exp | target logit | target cosine | owned], the layout of
 * adaface::shard::RowPartials, reduced across shards in place. Modes:
 *   0 (end of phase 1): the shard's max and sum-exp merged from the
 *     forward's splits (as the combine kernel merges them) and, where the
 *     label falls in the shard, its target logit and cosine (else 0),
 *     owned = 1 or 0;
 *   1 (after the all-reduce MAX of rows[0, B)): sum-exp *= exp(shard max -
 *     global max);
 *   2 (after the all-reduce SUM of rows[B, 5B)): records ADAFACE_ERR_SHARD
 *     for the first row whose owned count is not 1.
 * Exits when the record holds an error, as every kernel after stats. */
typedef struct AdafaceShardParams {
    uint64_t labels;       /* const int32 or int64 [B]: global labels */
    uint64_t record;       /* AdafaceStepRecord* */
    uint64_t partial_max;  /* const float[splits * B]: the forward's */
    uint64_t partial_sum;  /* const float[splits * B]: the forward's */
    uint64_t target_logit; /* const float[B] */
    uint64_t target_cos;   /* const float[B] */
    uint64_t rows;         /* float[5 * B] */
    int64_t batch;
    int64_t splits;        /* the forward's splits */
    int64_t class_offset;  /* the shard's first class */
    int64_t classes;       /* classes in the shard */
    int64_t mode;
} AdafaceShardParams;

/* Naive baseline (adaface::naive, kernels/naive.cu): the parameters
 * of every one of its kernels. */
typedef struct AdafaceNaiveParams {
    uint64_t x;           /* const T[B * D] */
    uint64_t w;           /* const T[C * D] */
    uint64_t labels;      /* const int32 or int64 [B] */
    uint64_t record;      /* AdafaceStepRecord* (reset by adaface_stats) */
    uint64_t state;       /* double[2]: EMA state, committed by the loss kernel */
    uint64_t row_norm;    /* const float[B] (from adaface_stats) */
    uint64_t row_a;       /* const float[B] */
    uint64_t row_b;       /* const float[B] */
    uint64_t class_norm;  /* float[C] */
    uint64_t xn;          /* T[B * D]: x / ||x||, GEMM operand */
    uint64_t wn;          /* T[C * D]: W / ||W||, GEMM operand */
    uint64_t logits;      /* float[B * C]: cosines in, dL/dcos out */
    uint64_t grad16;      /* T[B * C]: dL/dcos in T for the gradient GEMMs (the logits themselves for f32) */
    uint64_t sample_loss; /* float[B] */
    uint64_t dx;          /* float[B * D]: dL/dxn from the GEMM in, dL/dx out */
    uint64_t dw;          /* float[C * D]: dL/dwn from the GEMM in, dL/dW out */
    int64_t batch;
    int64_t dim;
    int64_t classes;
    float s;
    float eps;
    float m1;
    float inv_batch;
} AdafaceNaiveParams;

#endif
