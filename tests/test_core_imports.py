"""The quantization core must not import the mm libraries, timm or matplotlib."""
import subprocess
import sys

CORE = ['igq_plugin', 'igq_plugin.quant', 'igq_plugin.grouping', 'igq_plugin.search',
        'igq_plugin.nn', 'igq_plugin.adapters', 'igq_plugin.calibration', 'igq_plugin.report']


def test_core_imports_without_mm_libraries():
    code = ('import sys\n'
            + ''.join(f'import {module}\n' for module in CORE)
            + 'heavy = [m for m in ("mmengine", "mmdet", "mmseg", "mmcv", "timm", "matplotlib")\n'
              '         if m in sys.modules]\n'
              'print(heavy)\nassert not heavy, heavy\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
