from django.db import connection

from apps.core.db import PreparedStatement


def test_named_and_positional_placeholders_become_numbered_parameters():
    named = PreparedStatement("t_named", "SELECT %(a)s::int + %(b)s::int + %(a)s::int")
    assert named.body == "SELECT $1::int + $2::int + $1::int"
    assert named.execute_sql == "EXECUTE t_named(%s, %s)"
    positional = PreparedStatement("t_positional", "SELECT %s::int, %s::text")
    assert positional.body == "SELECT $1::int, $2::text"


def test_a_statement_is_prepared_once_per_session_and_can_be_turned_off(db, settings):
    statement = PreparedStatement("t_session", "SELECT %(x)s::int * 2")
    for x in (1, 2):
        with connection.cursor() as cursor:
            cursor.execute(*statement.sql_and_args({"x": x}))
            assert cursor.fetchone() == (2 * x,)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = 't_session'")
        assert cursor.fetchone() == (1,)
    settings.DB_PREPARED_STATEMENTS = False
    assert statement.sql_and_args({"x": 3}) == ("SELECT %(x)s::int * 2", {"x": 3})
