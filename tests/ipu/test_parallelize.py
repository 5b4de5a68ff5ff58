"""Pipelining annotations on the real models: placement as Graphcore's BERT app, removable."""
import pytest
import torch

from groupbert.ipu.pipeline import deparallelize, layer_ipus, parallelize
from groupbert.models import build_model


@pytest.fixture(scope="module")
def make_model(tiny_model_config):
    def make(kind, layers=4):  # the tiny model in 2 heads, a 2H feed-forward and (GroupBERT) 2 conv groups
        torch.manual_seed(0)
        return build_model(tiny_model_config(kind, num_layers=layers, num_heads=2, intermediate_size=64,
                                             conv_group_size=16))
    return make


def test_layer_ipus():
    assert layer_ipus([1, 3]) == [0, 1, 1, 1]
    assert layer_ipus([0, 4, 4, 4])[:5] == [1, 1, 1, 1, 2]


@pytest.mark.parametrize("kind", ["bert", "groupbert"])
def test_parallelize_keeps_numerics_and_is_removable(kind, make_model):
    model = make_model(kind).eval()
    ids = torch.randint(0, 99, (2, 16))
    before = model(ids).mlm_logits
    parallelize(model, [1, 1, 2])
    torch.testing.assert_close(model(ids).mlm_logits, before)  # blocks are no-ops outside PopTorch
    deparallelize(model)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_layers_that_do_not_cover_the_model_are_rejected(make_model):
    with pytest.raises(ValueError, match="places 3 layers but the model has 4"):
        parallelize(make_model("groupbert"), [1, 2])


def test_gpt2_pipelined_through_the_emulator_trains_like_plain_training(tiny_model_config):
    """GPT-2 over 2 IPUs (ln_f and the tied head back on IPU 0: 3 stages, GA >= 5) with PopART's AdamW
    equals our AdamW on the mean gradient of the same micro-batches."""
    from groupbert.ipu import emulator as poptorch
    from groupbert.models.gpt2 import GPT2LMHeadModel
    from optimizers import AdamW

    torch.manual_seed(0)
    cfg = tiny_model_config("gpt2", intermediate_size=128, max_positions=32, layer_norm_eps=1e-5)
    ref, emu = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    emu.load_state_dict(ref.state_dict())
    ga, micro, steps = 6, 2, 2
    data = torch.randint(0, 99, (steps, ga * micro, 16))

    class WithLoss(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return poptorch.identity_loss(self.m(ids, labels=ids).loss, reduction="none")

    parallelize(emu, [1, 1])
    opts = poptorch.Options()
    opts.Training.gradientAccumulation(ga)
    opts.setExecutionStrategy(poptorch.PipelinedExecution(poptorch.AutoStage.AutoIncrement))
    trainer = poptorch.trainingModel(WithLoss(emu), opts,
                                     optimizer=poptorch.optim.AdamW(emu.parameters(), lr=1e-2, eps=1e-8))
    opt = AdamW(ref.parameters(), lr=1e-2, eps=1e-8)
    for step in range(steps):
        trainer(data[step])
        opt.zero_grad()
        for chunk in data[step].split(micro):
            (ref(chunk, labels=chunk).loss / ga).backward()
        opt.step()
    assert len(trainer.stages) == 3 and trainer.num_pipeline_stages == 5  # forward, training stages
    trainer.copyWeightsToHost()
    # atol 1e-5: the key bias has a zero true gradient (softmax is shift-invariant), so Adam turns
    # summation-order noise of ~1e-10 into steps of a few 1e-6; everything else agrees to 1e-6
    for (name, a), b in zip(ref.state_dict().items(), emu.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
