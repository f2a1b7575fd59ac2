\set id random(1, 100000)
update b_set set status = case when status = 'PENDING' then 'CONFIRMED' else 'PENDING' end, updated_at = now() where id = :id;
