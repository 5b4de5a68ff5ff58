"""Blocks, stages and pipeline rules on the emulator (graphcore/poptorch tests/blocks_test.py,
batching_test.py pipelining cases)."""
import pytest
import torch

from groupbert.ipu import emulator as poptorch

torch.set_num_threads(1)


class FourBlockModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1, self.lin2, self.lin3, self.lin4 = (torch.nn.Linear(1, 1) for _ in range(4))

    def forward(self, x):
        with poptorch.Block("B1", ipu_id=0):
            out = self.lin1(x)
        with poptorch.Block("B2", ipu_id=1):
            out = self.lin2(out)
        with poptorch.Block("B3", ipu_id=2):
            out = self.lin3(out)
        with poptorch.Block("B4", ipu_id=3):
            out = self.lin4(out)
        return out


class FourBlockModelNoScope(FourBlockModel):
    def forward(self, x):
        poptorch.Block.start("B1", ipu_id=0)
        out = self.lin1(x)
        poptorch.Block.start("B2", ipu_id=1)
        out = self.lin2(out)
        poptorch.Block.start("B3", ipu_id=2)
        out = self.lin3(out)
        poptorch.Block.start("B4", ipu_id=3)
        return self.lin4(out)


class TrainingFourBlockModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.four_block = inner

    def forward(self, x):
        out = self.four_block(x)
        with poptorch.Block("B4", ipu_id=3):
            loss = poptorch.identity_loss(out, reduction="mean")
        return out, loss


def test_annotations_are_noops_on_cpu():
    model = FourBlockModel()
    x = torch.randn(3, 1)
    expected = model.lin4(model.lin3(model.lin2(model.lin1(x))))
    torch.testing.assert_close(model(x), expected)
    seq = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    poptorch.BeginBlock(seq[1], "B", ipu_id=1)
    torch.testing.assert_close(seq(torch.ones(1, 2)), seq[1](seq[0](torch.ones(1, 2))))


@pytest.mark.parametrize("num_grad_accums", (4, 5, 7))
@pytest.mark.parametrize("device_iterations", (1, 2))
@pytest.mark.parametrize("inner", [FourBlockModel, FourBlockModelNoScope])
def test_gradient_accumulation_pipelined_training(num_grad_accums, device_iterations, inner):
    opts = poptorch.Options().deviceIterations(device_iterations)
    opts.Training.gradientAccumulation(num_grad_accums)
    pm = poptorch.trainingModel(TrainingFourBlockModel(inner()), options=opts)
    x = torch.zeros(num_grad_accums * device_iterations)
    if num_grad_accums in (4, 5):
        with pytest.raises(poptorch.poptorch_core.Error,
                           match=r"poptorch\.Options\(\)\.Training\.gradientAccumulation must be greater than or "
                                 r"equal to the number of pipeline stages \(7\) when using "
                                 r"poptorch\.PipelinedExecution\. Please note that a model with 4 pipeline "
                                 r"stages in PopTorch will have an additional 3 stages when training\."):
            pm(x)
    else:
        pm(x)
        assert [s.ipu for s in pm.stages] == [0, 1, 2, 3] and pm.num_ipus == 4
        assert pm.num_pipeline_stages == 7


@pytest.mark.parametrize("pipelined", [True, False])
@pytest.mark.parametrize("device_iterations", (2, 4))
def test_device_iterations_pipelined_inference(pipelined, device_iterations):
    opts = poptorch.Options().deviceIterations(device_iterations)
    if not pipelined:
        opts.setExecutionStrategy(poptorch.ShardedExecution())
    pm = poptorch.inferenceModel(FourBlockModel(), options=opts)
    if pipelined and device_iterations == 2:
        with pytest.raises(poptorch.Error, match=r"poptorch\.Options\(\)\.deviceIterations must be greater than "
                                                 r"or equal to the number of pipeline stages \(4\)"):
            pm(torch.zeros(device_iterations))
    else:
        assert pm(torch.zeros(device_iterations)).shape == (device_iterations,)


def test_consecutive_blocks_on_one_ipu_merge():
    class Six(torch.nn.Module):
        def forward(self, x):
            return x * 6

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l0, self.l1, self.l2 = Six(), Six(), Six()

        def forward(self, x):
            return self.l2(self.l1(self.l0(x)))

    m = Model()
    poptorch.BeginBlock(m.l1, ipu_id=1)
    poptorch.BeginBlock(m.l2, ipu_id=1)
    pm = poptorch.inferenceModel(m, poptorch.Options().deviceIterations(2))
    pm(torch.randn(2, 5))
    # l0 runs before any block: IPU 0, stage 0; l1 and l2 merge into one stage on IPU 1
    assert [(s.ipu, s.block_ids) for s in pm.stages] == [(0, [None]), (1, ["0", "1"])]


def test_auto_increment_allows_going_back_to_an_earlier_ipu():
    class Model(torch.nn.Module):
        def forward(self, x):
            poptorch.Block.useAutoId()
            with poptorch.Block(ipu_id=0):
                x = x * 2
            with poptorch.Block(ipu_id=1):
                x = x * 3
            with poptorch.Block(ipu_id=2):
                x = x * 4
            with poptorch.Block(ipu_id=1):
                x = x * 5
            return x

    opts = poptorch.Options().deviceIterations(4)
    opts.setExecutionStrategy(poptorch.PipelinedExecution(poptorch.AutoStage.AutoIncrement))
    pm = poptorch.inferenceModel(Model(), opts)
    pm.compile(torch.randn(4, 5))
    assert [r.stage_id for r in pm.placement.regions] == [1, 2, 3, 4]  # as PopTorch's log: stage(1..4)
    assert [s.ipu for s in pm.stages] == [0, 1, 2, 1]
    with pytest.raises(poptorch.Error, match="AutoStage.AutoIncrement"):
        poptorch.inferenceModel(Model(), poptorch.Options().deviceIterations(4)).compile(torch.randn(4, 5))


class TiedBert(torch.nn.Module):
    """Embedding on IPU 0, encoder layers on IPUs 1..3, tied MLM head back on IPU 0 (graphcore BERT)."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(11, 4)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
        self.head = torch.nn.Linear(4, 4)
        poptorch.BeginBlock(self.embedding, "Embedding", ipu_id=0)
        for i, layer in enumerate(self.layers):
            poptorch.BeginBlock(layer, f"Encoder{i}", ipu_id=i + 1)
        poptorch.BeginBlock(self.head, "Head", ipu_id=0)

    def forward(self, ids, labels):
        h = self.embedding(ids)
        for layer in self.layers:
            h = torch.tanh(layer(h))
        logits = self.head(h) @ self.embedding.weight.t()  # tied decoder
        return poptorch.identity_loss(torch.nn.functional.cross_entropy(logits, labels), reduction="none")


def test_same_as_ipu_going_back_to_ipu0_is_an_error():
    opts = poptorch.Options()
    opts.Training.gradientAccumulation(9)
    pm = poptorch.trainingModel(TiedBert(), opts)
    ids = torch.randint(0, 11, (9,))
    with pytest.raises(poptorch.Error, match=r"runs on IPU 0 after block 'Encoder2' on IPU 3.*"
                                             r"PipelinedExecution\(poptorch\.AutoStage\.AutoIncrement\)"):
        pm(ids, ids)


def test_tied_head_with_auto_increment_has_five_stages():
    opts = poptorch.Options().setExecutionStrategy(poptorch.PipelinedExecution(poptorch.AutoStage.AutoIncrement))
    opts.Training.gradientAccumulation(8)
    model = TiedBert()
    ids = torch.randint(0, 11, (8,))
    with pytest.raises(poptorch.Error, match=r"number of pipeline stages \(9\).*5 pipeline stages"):
        poptorch.trainingModel(model, opts.clone())(ids, ids)
    opts = opts.clone()
    opts.Training.gradientAccumulation(9)
    pm = poptorch.trainingModel(TiedBert(), opts)
    ids = torch.randint(0, 11, (9,))
    pm(ids, ids)
    assert [s.ipu for s in pm.stages] == [0, 1, 2, 3, 0] and pm.num_ipus == 4
    blocks = {b.block_id: b for b in pm.block_placements}
    assert blocks["Encoder1"].ipu == 2 and blocks["Encoder1"].param_names == ["layers.1.bias", "layers.1.weight"]
    assert "embedding.weight" in blocks["Head"].param_names  # the tied weight is used on IPU 0 twice
    assert pm.stages[4].block_ids == ["Head"]


def test_sharded_execution_has_no_pipeline_rules():
    opts = poptorch.Options().setExecutionStrategy(poptorch.ShardedExecution(poptorch.AutoStage.AutoIncrement))
    pm = poptorch.trainingModel(TiedBert(), opts)
    ids = torch.randint(0, 11, (1,))
    pm(ids, ids)
    assert pm.num_ipus == 4 and len(pm.stages) == 5


def test_explicit_stages_and_ipus():
    opts = poptorch.Options().deviceIterations(2)
    opts.setExecutionStrategy(poptorch.PipelinedExecution(poptorch.Stage("B1", "B2").ipu(0),
                                                          poptorch.Stage("B3", "B4").ipu(1)))
    pm = poptorch.inferenceModel(FourBlockModel(), opts)
    pm(torch.zeros(2))
    assert [(s.ipu, s.block_ids) for s in pm.stages] == [(0, ["B1", "B2"]), (1, ["B3", "B4"])]
    assert opts._execution_strategy.stage("B3")._stage_id == 1
    with pytest.raises(AssertionError, match="Unknown Block 'B3'"):
        bad = poptorch.Options().setExecutionStrategy(poptorch.PipelinedExecution("B1", "B2"))
        poptorch.inferenceModel(FourBlockModel(), bad).compile(torch.zeros(1))


def test_no_active_block_and_missing_ipu():
    class Model(torch.nn.Module):
        def forward(self, x):
            poptorch.Block.useAutoId()
            with poptorch.Block(ipu_id=0):
                x = x * 4
            return x * 4

    opts = poptorch.Options().deviceIterations(2)
    opts.setExecutionStrategy(poptorch.PipelinedExecution(poptorch.AutoStage.AutoIncrement))
    with pytest.raises(RuntimeError, match="No active Block"):
        poptorch.inferenceModel(Model(), opts).compile(torch.randn(2, 5))

    class NoIpu(torch.nn.Module):
        def forward(self, x):
            with poptorch.Block("A"):
                return x * 2

    with pytest.raises(AssertionError, match="SameAsIpu was selected but no IPU was specified for block A"):
        poptorch.inferenceModel(NoIpu()).compile(torch.randn(1, 5))


def test_begin_block_twice_remove_blocks_and_block_function():
    lin = torch.nn.Linear(2, 2)
    assert poptorch.BeginBlock(lin, "A", ipu_id=1) is lin
    with pytest.raises(poptorch.Error, match="already been assigned to a block"):
        poptorch.BeginBlock(lin, "B", ipu_id=2)
    outer = torch.nn.Sequential(lin)
    poptorch.removeBlocks(outer)
    assert poptorch.blocks.block_annotations(outer) == []
    poptorch.BeginBlock(lin, "B", ipu_id=2)
    assert poptorch.blocks.block_annotations(outer) == [("0", "B", 2)]

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

        @poptorch.BlockFunction("first", ipu_id=0)
        def first(self, x):
            return self.a(x)

        def forward(self, x):
            x = self.first(x)
            with poptorch.Block("second", ipu_id=1):
                return self.b(x)

    pm = poptorch.inferenceModel(Model(), poptorch.Options().deviceIterations(2))
    pm(torch.ones(2, 2))
    assert [(b.block_id, b.ipu, b.param_names) for b in pm.block_placements] == [
        ("first", 0, ["a.bias", "a.weight"]), ("second", 1, ["b.bias", "b.weight"])]
    callable_block = poptorch.BeginBlock(lambda x: x + 1, "fn", ipu_id=0)
    assert isinstance(callable_block, torch.nn.Module) and callable_block(torch.ones(1)).item() == 2.0


def test_blocks_do_not_change_numerics():
    torch.manual_seed(0)
    model = TrainingFourBlockModel(FourBlockModel())
    ref = TrainingFourBlockModel(FourBlockModel())
    ref.load_state_dict(model.state_dict())
    opts = poptorch.Options()
    opts.Training.gradientAccumulation(7)
    x = torch.randn(7, 1)
    pm = poptorch.trainingModel(model, opts, torch.optim.SGD(model.parameters(), lr=0.1))
    pm(x)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for i in range(7):
        (ref(x[i:i + 1])[1] / 7).backward()
    opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)
