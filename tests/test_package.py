import subprocess
import sys


def test_import_is_light():
    # `import e5x` must not pull in torch, triton, transformers or openai.
    code = (
        "import sys, e5x, e5x._native\n"
        "heavy = [m for m in ('torch', 'triton', 'transformers', 'openai', 'peft') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_native_version_matches_package():
    import e5x
    import e5x._native

    assert e5x._native.__version__ == e5x.__version__


def test_unknown_attribute_is_an_attribute_error():
    import e5x

    try:
        e5x.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_cli_help_lists_stages():
    out = subprocess.run([sys.executable, "-m", "e5x", "--help"], capture_output=True, text=True, check=True)
    assert "usage: e5x" in out.stdout


def test_every_public_name_resolves():
    import e5x

    for name in e5x.__all__:
        assert getattr(e5x, name) is not None, name
    assert callable(e5x.train) and callable(e5x.evaluate) and callable(e5x.synthesize)
    assert hasattr(e5x.Embedder, "from_pretrained")


def test_stage_functions_stay_functions_whatever_is_imported():
    # Each stage's package has its own name, so importing a package binds no public name.
    code = (
        "import e5x.training.loop as loop, e5x.cleaning.pipeline as pipe, e5x\n"
        "import e5x.synth, e5x.eval\n"
        "assert e5x.train is loop.train and e5x.clean is pipe.clean, (e5x.train, e5x.clean)\n"
        "assert e5x.synthesize is e5x.synth.synthesize and e5x.evaluate is e5x.eval.evaluate\n"
        "for stage in (e5x.train, e5x.clean):\n"
        "    try:\n"
        "        stage(None)\n"
        "    except Exception as exc:\n"
        "        print(stage.__name__, type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # Both calls reached the stage functions, which reject a missing config.
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["train", "clean"], out.stdout
    assert "not callable" not in out.stdout, out.stdout
