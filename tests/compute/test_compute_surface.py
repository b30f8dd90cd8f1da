"""perceiver.compute exports what users set and the seam's types and calls, nothing else."""

import types

from perceiver import compute


def test_compute_exports_only_its_public_surface():
    exported = {
        name for name, value in vars(compute).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert exported == set(compute.__all__)
    # Users' five, then the seam; internals such as kernels and fold choices are not here.
    assert {"options", "configure", "cast_params", "jit", "compiler_options"} <= exported
    assert not exported & {"choose_fold", "tiled_attention", "decoder_chunk", "TILE_ELEMENTS"}
    assert len(exported) <= 30


def test_names_moved_inside_compute_still_read_with_a_warning():
    from perceiver.compute import settings
    import pytest

    with pytest.warns(DeprecationWarning, match="perceiver.compute.settings.TILE_ELEMENTS"):
        assert compute.TILE_ELEMENTS == settings.TILE_ELEMENTS
    with pytest.raises(AttributeError):
        compute.no_such_name  # noqa: B018
