"""Load a script of ``tools/`` as a module (the tools are scripts, not a package)."""
import importlib.util
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool(name: str):
    """The module ``tools/<name>.py``, executed once per call."""
    spec = importlib.util.spec_from_file_location(f'{name}_tool',
                                                  osp.join(REPO, 'tools', f'{name}.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool
