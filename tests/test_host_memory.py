import subprocess
import sys

import pytest

from igq_plugin.host_memory import MAX_THRESHOLD, reuse_freed_memory

LINUX = sys.platform.startswith('linux')

# A child process (the setting is process-wide and permanent): the kernel's page-fault
# count while 20 tensors of 64 MiB are allocated, written and freed one after another.
FAULTS = '''
import resource, sys, torch
from igq_plugin.host_memory import reuse_freed_memory
if sys.argv[1] == 'reuse':
    assert reuse_freed_memory()
torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(16 << 20).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def page_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, '-c', FAULTS, mode], capture_output=True,
                            text=True, check=True)
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(not LINUX, reason='glibc mallopt')
def test_reused_blocks_are_not_faulted_in_again():
    default, reused = page_faults('default'), page_faults('reuse')
    # default: each 64 MiB block is a fresh mapping, 16384 faults of 4 KiB pages per block
    assert default > 20 * 10000
    assert reused < default / 5  # one block faulted in once, then reused


@pytest.mark.parametrize('kwargs', [dict(mmap_threshold=4096), dict(trim_threshold=-1),
                                    dict(mmap_threshold=MAX_THRESHOLD + 1),
                                    dict(trim_threshold=True), dict(mmap_threshold=1.5e6)])
def test_bad_thresholds_are_refused(kwargs):
    (name, value), = kwargs.items()
    with pytest.raises(ValueError, match=f'{name}={value!r}; allowed are integers'):
        reuse_freed_memory(**kwargs)
