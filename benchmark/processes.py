"""Running a plan: its train.py and eval.py processes, --jobs at a time, in plan order as their
dependencies allow; a child dies with its parent; what finished before is reused."""
import ctypes
import os
import signal
import subprocess
import sys
import time

from .plan import Plan


def _say(message: str) -> None:
    print(message, flush=True)  # a redirected log shows progress as it happens


def run_plan(plan: Plan, jobs: int, on_cpu: bool, say=_say) -> None:
    """Run the plan's tasks, jobs at a time, in plan order as their dependencies allow."""
    env = dict(os.environ)
    if on_cpu:  # jobs share the cores: one thread each
        env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    running = {}
    # Training first: a branched run can start once its parent's checkpoint exists, and it should
    # not wait behind evaluations.
    pending = sorted(plan.tasks, key=lambda task: task.kind != 'train')
    try:
        while pending or running:
            for task in list(pending):
                if plan.finished(task):
                    task.status, task.reused = 'done', True
                    pending.remove(task)
                elif any(d.status in ('failed', 'blocked') for d in task.depends):
                    task.status = 'blocked'
                    task.why = f"{' and '.join(d.name for d in task.depends)} did not finish"
                    pending.remove(task)
                elif len(running) < jobs and plan.ready(task):
                    os.makedirs(task.folder, exist_ok=True)
                    cmd = [sys.executable] + plan.command(task)
                    say(f'start {task.name}: {" ".join(cmd[1:])}')
                    with open(task.log, 'a') as log:
                        log.write(f'\n$ {" ".join(cmd)}\n')
                        log.flush()
                        running[task] = (start_process(cmd, env, log), time.time())
                    task.status = 'running'
                    pending.remove(task)
            for task, (proc, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[task]
                ok = proc.returncode == 0 and plan.finished(task)
                task.status = 'done' if ok else 'failed'
                say(f"{'done' if ok else 'FAILED'} {task.name} ({time.time() - start:.0f} s)"
                    + ('' if ok else f': exit status {proc.returncode}, see {task.log}'))
            if pending and not running and not any(plan.ready(t) for t in pending):
                for task in pending:  # waiting on something that will never come
                    task.status, task.why = 'blocked', plan.blocked_by(task)
                break
            time.sleep(0.2)
    finally:  # Ctrl-C, SIGTERM or a failure here: no run is left training without us
        for proc, _ in running.values():
            proc.terminate()  # checkpoints are atomic: a rerun resumes
        for proc, _ in running.values():
            proc.wait()


def start_process(cmd, env: dict, log):
    """One task's process: cmd (python, train.py or eval.py, its arguments), its output in the
    open file log; a Popen (poll, returncode, terminate, wait)."""
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """In a child, before it runs: SIGTERM when reproduce.py dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG; elsewhere the finally of run_plan covers every exit but SIGKILL)."""
    if sys.platform.startswith('linux'):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
