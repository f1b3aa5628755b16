"""Plain help (click's formatter: whole flag names at any width, text that can be copied) that
keeps the option groups typer's `rich_help_panel` names, as sections of their own."""

from __future__ import annotations

from typer.core import TyperCommand


class SectionedCommand(TyperCommand):
    """`@app.command(cls=SectionedCommand)`: options with `rich_help_panel="X"` are listed under "X:"."""

    def format_options(self, ctx, formatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}  # title -> (names, help), in order of first use
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            title = "Arguments" if param.param_type_name == "argument" else (
                getattr(param, "rich_help_panel", None) or "Options")
            sections.setdefault(title, []).append(record)
        for title, records in sections.items():
            with formatter.section(title):
                formatter.write_dl(records)
