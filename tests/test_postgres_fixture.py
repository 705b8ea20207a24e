from sqlalchemy import create_engine, inspect, text

COMPANY = "Société Tyrell"


def test_roundtrip_non_ascii_and_server_version(pg_url):
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE accounts (id serial PRIMARY KEY, name text NOT NULL)"))
            conn.execute(text("INSERT INTO accounts (name) VALUES (:name)"), {"name": COMPANY})
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM accounts")).scalar_one() == COMPANY
            assert conn.execute(text("SHOW server_encoding")).scalar_one() == "UTF8"
            version_num = conn.execute(text("SHOW server_version_num")).scalar_one()
        assert version_num and int(version_num) >= 100000
    finally:
        engine.dispose()


def test_each_database_is_separate(pg_url, pg_server):
    other_url = pg_server.create_database()
    assert other_url != pg_url
    first, second = create_engine(pg_url), create_engine(other_url)
    try:
        with first.begin() as conn:
            conn.execute(text("CREATE TABLE only_here (id int)"))
        assert inspect(first).has_table("only_here")
        assert not inspect(second).has_table("only_here")
        with first.connect() as c1, second.connect() as c2:
            db1 = c1.execute(text("SELECT current_database()")).scalar_one()
            db2 = c2.execute(text("SELECT current_database()")).scalar_one()
        assert db1 != db2
    finally:
        first.dispose()
        second.dispose()
