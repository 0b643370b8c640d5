# Runs a notebook headless with nbclient, the way `ferry train --notebook` runs it: in the
# environment image, as the training workload (argv: NOTEBOOK EXECUTED [KEY=VALUE ...]).
# Every cell's output is echoed as it arrives, so the run's log reads like a script's; the
# executed notebook is written after each cell, so a failure or a kill leaves it up to there.
import ast
import os
import sys
import warnings

# Notebooks written before nbformat 4.5 have no cell ids; nbformat adds them and warns.
warnings.filterwarnings("ignore", message="Cell is missing an id field")

MARK = "ferry-notebook:"


def say(msg):
    print(f"{MARK} {msg}", file=sys.stderr, flush=True)


try:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError
except ImportError as e:
    say(f"cannot run notebooks in this image: {e}; the environment needs nbclient and ipykernel")
    sys.exit(2)


def value(text):
    # As papermill's -p: Python literals keep their type, anything else is a string.
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def inject(nb, params):
    if not params:
        return None
    lines = ["# Parameters (ferry train --notebook -p)"]
    lines += [f"{k} = {value(v)!r}" for k, v in params]
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["injected-parameters"]
    at = 0
    for i, c in enumerate(nb.cells):
        if "parameters" in c.get("metadata", {}).get("tags", []):
            at = i + 1
            break
    nb.cells.insert(at, cell)
    return at


class Client(NotebookClient):
    def __init__(self, nb, out, number, **kw):
        super().__init__(nb, **kw)
        self.out = out
        self.number = number
        self.on_cell_execute = self.started
        self.on_cell_executed = self.save

    def started(self, cell, cell_index):
        say(f"running {self.number(cell_index)}")

    def save(self, cell, cell_index, execute_reply):
        nbformat.write(self.nb, self.out)

    def output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        kind = msg.get("msg_type")
        if kind == "stream":
            stream = sys.stderr if content.get("name") == "stderr" else sys.stdout
            stream.write(content.get("text", ""))
            stream.flush()
        elif kind in ("execute_result", "display_data"):
            text = content.get("data", {}).get("text/plain")
            if text:
                print(text, flush=True)
        return super().output(outs, msg, display_id, cell_index)


def main():
    if len(sys.argv) < 3:
        say("usage: run_notebook NOTEBOOK EXECUTED [KEY=VALUE ...]")
        return 2
    source, out = sys.argv[1], sys.argv[2]
    params = [a.split("=", 1) for a in sys.argv[3:]]
    nb = nbformat.read(source, as_version=4)
    injected = inject(nb, params)
    total = len(nb.cells) - (injected is not None)

    def number(index):
        # Cells are numbered as the notebook the user wrote shows them, from 1.
        if injected is None or index < injected:
            return f"cell {index + 1} of {total}"
        if index == injected:
            return "the injected parameters cell"
        return f"cell {index} of {total}"

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    client = Client(
        nb,
        out,
        number,
        timeout=None,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.dirname(os.path.abspath(source))}},
    )
    try:
        client.execute()
    except CellExecutionError as e:
        nbformat.write(nb, out)
        index = failed_cell(nb)
        where = number(index) if index is not None else "a cell"
        say(f"failed at {where}: {e.ename}: {first_line(e.evalue)}")
        return 1
    except DeadKernelError as e:
        nbformat.write(nb, out)
        say(f"failed: the kernel died ({first_line(str(e))}); out of memory?")
        return 1
    nbformat.write(nb, out)
    say(f"executed {total} cells")
    return 0


def failed_cell(nb):
    for i, c in enumerate(nb.cells):
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            if o.get("output_type") == "error":
                return i
    return None


def first_line(text):
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


sys.exit(main())
