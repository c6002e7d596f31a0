"""The report's plots: reading a training log into curves, and drawing them at whole epochs."""

import pytest

from segdino import DataError
from segdino.report import learning_curve_panels, learning_curves_figure, read_log


def test_read_log_takes_numeric_columns(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,train_loss,val_dice,lr,note\n0,0.9,,0.001,warmup\n1,0.7,0.4,0.001,\n2,0.5,0.6,0.0005,x\n")
    xname, curves = read_log(log)
    assert xname == "epoch" and set(curves) == {"train_loss", "val_dice", "lr"}
    assert curves["val_dice"] == ([1.0, 2.0], [0.4, 0.6])
    with pytest.raises(DataError, match="no such"):
        read_log(tmp_path / "absent.csv")


def test_learning_curves_show_loss_and_validation_only_at_whole_epochs(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,step,train_loss,val_dice,lr,seconds,images_per_s,val_dice_class1,val_dice_class2\n"
                   "1,10,0.9,0.2,1e-3,3.1,40,0.3,0.1\n2,20,0.6,0.5,9e-4,3.0,41,0.6,0.4\n"
                   "3,30,0.4,0.7,5e-4,2.9,42,0.8,0.6\n")
    xname, panels = learning_curve_panels(log)
    assert xname == "epoch"
    assert [(title, sorted(cols)) for title, cols in panels] == [
        ("training loss", ["train_loss"]), ("validation", ["val_dice", "val_dice_class1", "val_dice_class2"])]
    fig = learning_curves_figure(log)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    for ax in axes:
        fig.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert axes[1].get_ylim() == (0.0, 1.0)
