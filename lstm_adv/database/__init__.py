"""PostgreSQL: the embedded server, connections, loading tables, the shipped MIMIC-III demo, exports.

Modules: :mod:`~lstm_adv.database.server` (start/stop a private server in a project-local folder),
:mod:`~lstm_adv.database.connection` (connect with one-line errors),
:mod:`~lstm_adv.database.loader` (create MIMIC-III tables and COPY data in),
:mod:`~lstm_adv.database.demo` (verify and load the shipped demo).
"""
