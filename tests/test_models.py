import pytest
import torch

from qhyvit_fx.models import ModelError, create_model, load_checkpoint


def test_unknown_name_suggests_close_names():
    with pytest.raises(ModelError) as e:
        create_model("mobilevit_xxxs")
    assert "mobilevit_xxs" in str(e.value)


def test_pretrained_download_failure_tells_to_use_weights(monkeypatch):
    import timm

    def fail(*a, **k):
        if k.get("pretrained"):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load this file")
        raise AssertionError("unexpected")
    monkeypatch.setattr(timm, "create_model", fail)
    with pytest.raises(ModelError, match="--weights"):
        create_model("mobilevit_xxs", pretrained=True)


def test_pretrained_path_passes_pretrained_to_timm(monkeypatch):
    import timm
    calls = []
    real = timm.create_model

    def fake(name, pretrained=False, **kw):
        calls.append(pretrained)
        return real(name, pretrained=False, **kw)   # the download itself is what is mocked
    monkeypatch.setattr(timm, "create_model", fake)
    lm = create_model("mobilevit_xxs", pretrained=True, num_classes=7)
    assert calls == [True] and lm.source == "pretrained"
    assert lm.model.get_classifier().out_features == 7


def test_checkpoint_formats(tmp_path):
    m = create_model("mobilevit_xxs", num_classes=10).model
    sd = m.state_dict()
    torch.save(sd, tmp_path / "plain.pth")
    torch.save({"state_dict": sd, "meta": {"model": "mobilevit_xxs", "num_classes": 10, "img_size": 64}},
               tmp_path / "meta.pth")
    a = create_model("mobilevit_xxs", weights=str(tmp_path / "plain.pth"))
    b = create_model("mobilevit_xxs", weights=str(tmp_path / "meta.pth"))
    assert a.model.get_classifier().out_features == 10 and b.meta["img_size"] == 64
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a.model(x), m(x)) and torch.equal(b.model(x), m(x))


def test_bad_checkpoints(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(str(tmp_path / "junk.pth"))
    torch.save({"lr": 0.1}, tmp_path / "nosd.pth")
    with pytest.raises(ModelError, match="holds no state_dict"):
        load_checkpoint(str(tmp_path / "nosd.pth"))
    sd = create_model("mobilevit_xxs", num_classes=10).model.state_dict()
    torch.save(sd, tmp_path / "xxs.pth")
    with pytest.raises(ModelError, match="do not fit 'mobilevitv2_050'"):
        create_model("mobilevitv2_050", weights=str(tmp_path / "xxs.pth"))
    bad = dict(sd)
    bad["stem.conv.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(ModelError, match="differ in shape"):
        create_model("mobilevit_xxs", weights=str(tmp_path / "shape.pth"))
    nan = dict(sd)
    nan["head.fc.weight"] = torch.full_like(sd["head.fc.weight"], float("nan"))
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(ModelError, match="NaN or inf"):
        create_model("mobilevit_xxs", weights=str(tmp_path / "nan.pth"))
    torch.save({"state_dict": sd, "meta": {"model": "mobilevit_xs"}}, tmp_path / "other.pth")
    with pytest.raises(ModelError, match="are for model 'mobilevit_xs'"):
        create_model("mobilevit_xxs", weights=str(tmp_path / "other.pth"))
