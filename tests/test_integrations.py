"""gcshim with transformers' switches and Trainer, PEFT, and Lightning (each when installed)."""

import copy
import warnings

import pytest
import torch
from models import assert_exact_and_recomputed

import gcshim
from gcshim.entry.settings import Settings

transformers = pytest.importorskip("transformers")


def _checkpointing_flag(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if hasattr(model, "is_activation_checkpointing"):
            return model.is_activation_checkpointing
        return model.is_gradient_checkpointing


def _tiny_gpt():
    config = transformers.OpenAIGPTConfig(n_embd=32, n_layer=3, n_head=2, vocab_size=64,
                                          n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
                                          attn_pdrop=0.0)
    torch.manual_seed(0)
    return transformers.OpenAIGPTLMHeadModel(config)


def _tiny_llama():
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=2, num_key_value_heads=2,
                                      vocab_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def _enable(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable(**kwargs)


def test_enable_on_a_model_without_its_own_checkpointing_uses_gcshim(auto):
    model = _tiny_gpt()
    with pytest.raises(ValueError, match="does not support"):
        _enable(model)  # what the script hits without gcshim
    auto.activate(Settings())
    _enable(model, gradient_checkpointing_kwargs={"use_reentrant": True})
    report = gcshim.report(model)
    assert len(report.checkpointed) == 3
    assert {row.mode for row in report.rows} == {"reentrant"}  # the script's kwargs count
    assert _checkpointing_flag(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_disable()
    assert not gcshim.is_applied(model) and not _checkpointing_flag(model)


def test_enable_on_a_model_whose_own_checkpointing_works_leaves_it_to_transformers(auto):
    auto.activate(Settings())
    model = _tiny_llama()
    _enable(model)
    assert gcshim.report(model).checkpointed == []
    assert _checkpointing_flag(model)
    # transformers' own function sits on the layers (4.53+) or on the stack (before)
    funcs = [m.__dict__["_gradient_checkpointing_func"] for m in model.modules()
             if "_gradient_checkpointing_func" in m.__dict__]
    pass_through = gcshim.integrations.transformers.flags.PassThrough
    assert funcs and not any(isinstance(f, pass_through) for f in funcs)


def test_gcshim_layers_setting_replaces_transformers_own(auto):
    auto.activate(Settings(layers="auto"))
    model = _tiny_llama()
    _enable(model)
    assert len(gcshim.report(model).checkpointed) == 3
    assert isinstance(model.model.layers[0]._gradient_checkpointing_func,
                      gcshim.integrations.transformers.flags.PassThrough)


def test_methods_are_restored_on_deactivate(auto):
    cls = transformers.PreTrainedModel
    before = {name: cls.__dict__[name] for name in ("gradient_checkpointing_enable",
                                                    "gradient_checkpointing_disable")}
    auto.activate(Settings())
    assert cls.__dict__["gradient_checkpointing_enable"] is not before[
        "gradient_checkpointing_enable"]
    auto.deactivate()
    for name, function in before.items():
        assert cls.__dict__[name] is function


def _train(output_dir, checkpointing):
    from torch.utils.data import Dataset

    class Tokens(Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, index):
            ids = torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(index))
            return {"input_ids": ids, "labels": ids}

    model = _tiny_gpt()
    args = transformers.TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=3, logging_steps=1,
        report_to=[], use_cpu=True, gradient_checkpointing=checkpointing, save_strategy="no",
        seed=0, learning_rate=1e-3)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return trainer, model, losses


def test_trainer_trains_an_unsupported_model_with_gradient_checkpointing(auto, tmp_path):
    pytest.importorskip("accelerate")
    _, _, reference = _train(tmp_path / "plain", checkpointing=False)
    auto.activate(Settings())
    trainer, model, losses = _train(tmp_path / "gc", checkpointing=True)
    assert len(gcshim.report(model).checkpointed) == 3
    assert losses == pytest.approx(reference, rel=1e-5)
    assert _checkpointing_flag(model)


def test_ddp_find_unused_parameters_decision_reads_gcshims_checkpointing(auto, tmp_path):
    """Trainer picks DDP's find_unused_parameters from the model's checkpointing flag (True
    breaks reentrant checkpointing); a model checkpointed by gcshim must read as checkpointed."""
    pytest.importorskip("accelerate")
    auto.activate(Settings())
    model = _tiny_gpt()
    _enable(model)  # the script enables it itself; the Trainer arguments don't say so
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = transformers.Trainer(model=model, args=args)
    if not hasattr(trainer, "_build_accelerator_args"):
        pytest.skip("this transformers decides find_unused_parameters elsewhere")
    [handler] = trainer._build_accelerator_args()["kwargs_handlers"]
    assert handler.find_unused_parameters is False
    gcshim.remove(model)
    [handler] = trainer._build_accelerator_args()["kwargs_handlers"]
    assert handler.find_unused_parameters is True  # and it follows the flag back


def test_peft_lora_gets_equal_gradients_under_reentrant_checkpointing():
    peft = pytest.importorskip("peft")
    base = _tiny_llama()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                             lora_dropout=0.0, init_lora_weights=False)
    model = peft.get_peft_model(base, config)
    reference = copy.deepcopy(model)
    ids = torch.randint(0, 64, (2, 16))
    gcshim.apply(model, use_reentrant=True)  # no enable_input_require_grads anywhere
    reference.train()
    reference(input_ids=ids, labels=ids).loss.backward()
    model.train()
    assert_exact_and_recomputed(
        model, lambda: model(input_ids=ids, labels=ids).loss.backward(),
        {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}, rtol=1.3e-6)
    lora = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    expected = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    assert lora and lora.keys() == expected.keys()
    for name, grad in lora.items():
        assert grad is not None, name
        torch.testing.assert_close(grad, expected[name], msg=name)


def test_lightning_callback_applies_for_fit_and_removes_after(tmp_path):
    lightning = pytest.importorskip("lightning")
    from gcshim.integrations.lightning import GradientCheckpointing

    seen = []

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x):
            return x + torch.tanh(self.lin(x))

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.Sequential(*[Block() for _ in range(3)])

        def training_step(self, batch, _index):
            seen.append(gcshim.report(self).checkpointed)
            return self.blocks(batch).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.randn(8, 8), batch_size=4)

    module = Module()
    trainer = lightning.Trainer(max_epochs=1, accelerator="cpu", logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=str(tmp_path),
                                callbacks=[GradientCheckpointing(every=2)])
    trainer.fit(module)
    assert seen == [["blocks.0", "blocks.2"]] * 2
    assert not gcshim.is_applied(module)
    with pytest.raises(TypeError):
        GradientCheckpointing(layers=3)


def test_each_kind_of_notice_is_logged_once(auto, gcshim_log):
    auto.activate(Settings())
    for _ in range(2):
        _enable(_tiny_gpt())
    notices = [r for r in gcshim_log.records if "has no checkpointing of its own" in r.getMessage()]
    assert len(notices) == 1


def test_enable_takes_over_the_layers_transformers_flag_does_nothing_for(auto):
    from test_transformers_gaps import _mllama_vision

    auto.activate(Settings())
    model, _inputs = _mllama_vision()
    _enable(model)  # transformers' own path runs, and its flag is inert on these layers
    checkpointed = gcshim.report(model).checkpointed
    taken_over = [path for path in checkpointed if "transformer.layers" in path]
    assert taken_over
    assert _checkpointing_flag(model)


def test_import_before_transformers_still_routes_its_switches():
    import subprocess
    import sys

    script = (
        "import gcshim.auto, gcshim, warnings\n"
        "import transformers\n"
        "warnings.simplefilter('ignore', FutureWarning)\n"
        "config = transformers.OpenAIGPTConfig(n_embd=32, n_layer=2, n_head=2, vocab_size=64,"
        " n_positions=16)\n"
        "model = transformers.OpenAIGPTLMHeadModel(config)\n"
        "model.gradient_checkpointing_enable()\n"
        "print(len(gcshim.report(model).checkpointed))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
