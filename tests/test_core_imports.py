"""The quantization core must not import the mm libraries, timm or matplotlib."""
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'igq_plugin'
# every module of the package outside igq_plugin.mm, the one mm sub-package
CORE = sorted('.'.join(p.relative_to(PACKAGE.parent).with_suffix('').parts).removesuffix('.__init__')
              for p in PACKAGE.rglob('*.py') if p.relative_to(PACKAGE).parts[0] != 'mm')


def test_core_is_every_module_but_mm():
    assert {'igq_plugin', 'igq_plugin.quant', 'igq_plugin.quantizers.igq',
            'igq_plugin.calibration'} <= set(CORE)
    assert not any(m.startswith('igq_plugin.mm') for m in CORE)


def test_core_imports_without_mm_libraries():
    code = ('import sys\n'
            + ''.join(f'import {module}\n' for module in CORE)
            + 'heavy = [m for m in ("mmengine", "mmdet", "mmseg", "mmcv", "timm", "matplotlib")\n'
              '         if m in sys.modules]\n'
              'print(heavy)\nassert not heavy, heavy\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
