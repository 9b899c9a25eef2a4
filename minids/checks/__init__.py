"""Graded exercises: the checks that exercise notebooks call (one module per chapter), the
builder that writes `exercises/` from `solutions/`, and the grader.

    from minids.checks import check_rms_norm
    check_rms_norm(my_rms_norm)     # prints what passed; on failure what was expected and what came
"""

from .ch01 import (  # noqa: F401
    check_causal_attention,
    check_rms_norm,
    check_rope,
    check_rope_is_relative,
    check_rope_wavelengths,
    check_shift_targets,
    check_temperature_experiment,
    check_temperature_limits,
    check_temperature_probs,
)
from .ch02 import (  # noqa: F401
    check_batch_experiment,
    check_gqa_step,
    check_kv_cache_size,
    check_max_batch,
    check_repeat_kv,
)
from .ch03 import (  # noqa: F401
    check_absorbed_decode_scores,
    check_cache_bytes_v3,
    check_kv_rank_experiment,
    check_merge_cost,
    check_merge_weights,
)
from .ch04 import (  # noqa: F401
    check_balance_numbers,
    check_gamma_experiment,
    check_group_mask,
    check_moe_dispatch,
    check_route,
    check_sequence_balance_loss,
    check_update_bias,
)
from .ch05 import (  # noqa: F401
    check_acceptance_experiment,
    check_mtp_loss,
    check_mtp_targets,
    check_speculation_numbers,
    check_speculative_decode,
)
from .ch06 import (  # noqa: F401
    check_block_parts,
    check_equal_compute_numbers,
    check_equal_flops_experiment,
    check_equal_flops_width,
    check_ffn_active_params,
    check_flops_breakdown,
)
from .ch07 import (  # noqa: F401
    check_economics_numbers,
    check_implied_mfu,
    check_kv_cache_gib,
    check_mfu_experiment,
    check_moe_flops_per_token,
    check_training_cost,
)
from .ch08 import (  # noqa: F401
    check_accumulate_grads,
    check_activation_experiment,
    check_max_micro_batch,
    check_no_memory_saver,
    check_rank_slice,
    check_run_numbers,
    check_steady_mfu,
    check_train_memory,
)
from .ch09 import (  # noqa: F401
    check_accumulator,
    check_bubbles,
    check_ib_bytes,
    check_no_byte_saver,
    check_optimizer_memory,
    check_pipeline_idle,
    check_quantize_tiles,
    check_tile_experiment,
)
from .checking import Checker, CheckFailed  # noqa: F401
