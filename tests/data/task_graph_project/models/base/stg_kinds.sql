select * from {{ ref('raw_kinds') }}
