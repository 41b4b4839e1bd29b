"""A modest embedded English word list (common words, lowercase a-z) for next-letter prediction."""

WORDS: tuple[str, ...] = tuple(
    """
about above across act action add after afternoon again against age ago agree air all allow almost alone along
already also always am among amount and angry animal another answer any anyone anything appear apple area arm
army around arrive art as ask at aunt autumn away baby back bad bag ball bank base basket bath be bear beat
beautiful because become bed bedroom bee before begin behind believe bell below belt bench beside best better
between bicycle big bird birthday bit bite black blanket blood blow blue board boat body bone book boot born
both bottle bottom box boy brain branch bread break breakfast brick bridge bright bring brother brown brush
build burn bus business busy but butter button buy by cake call calm camera camp can candle cap capital
captain car card care carry case castle cat catch cause cave center chain chair chance change chart cheap
cheese chest chicken child children choose church circle city class clean clear climb clock close cloth cloud
coast coat coffee cold collect color come common cook cool copy corn corner cost cotton could count country
course cousin cover cow crowd cry cup cut dance danger dark daughter day dead dear decide deep deer desk
dinner direct dirty discover do doctor does dog dollar done door double down draw dream dress drink drive drop
dry duck during dust each ear early earth east easy eat edge egg eight either elephant else empty end enemy
enjoy enough enter equal even evening event ever every exact example except expect experience explain eye face
fact fair fall family famous far farm fast fat father fear feather feel fell few field fifteen fight figure
fill final find fine finger finish fire first fish five flat floor flower fly follow food foot for force
forest forget fork form forward four fox free fresh friend frog from front fruit full fun game garden gate
gather gave general gentle get gift girl give glad glass go goat gold good grass gray great green ground group
grow guard guess guide hair half hall hand happen happy hard hat have he head hear heart heat heavy help her
here high hill him his history hold hole holiday home honey hope horse hospital hot hotel hour house household
houses how huge human hundred hungry hunt hurry ice idea if important in inch insect inside interest iron
island it jacket job join joke journey juice jump just keep key kick kind king kitchen kite knee knife knock
know lady lake lamp land language large last late laugh lead leaf learn least leave left leg lemon lesson let
letter level library lie life lift light like line lion lip liquid list listen little live long look lose lot
loud love low lunch machine made magic mail main make man many map mark market master match matter may meal
mean measure meat meet melon member men metal middle might mile milk mind minute mirror miss modern moment
money monkey month moon more morning most mother mountain mouse mouth move much music must name narrow nation
nature near neck need needle neighbor nest never new news next nice night nine no noise none north nose not
note nothing notice now number nurse object ocean of off offer office often oil old on once one only open
orange order other our out outside over own page paint pair paper parent park part party pass past path pay
peace pen pencil people pepper perhaps person pet phone piano pick picture piece pig pillow pink place plain
plan plane plant plate play please pocket poem point police pool poor potato power present pretty price print
problem produce promise pull pupil push put queen question quick quiet rabbit race radio rain raise reach read
ready real reason red remember rest rice rich ride right ring river road rock roof room root rope rose round
row rule run sad safe sail salt same sand save say school science sea season seat second see seed sell send
sense sentence seven shadow shape share sharp she sheep shelf shell shine ship shirt shoe shop short should
shoulder shout show side sign silver simple since sing sister sit six size skin sky sleep slow small smell
smile smoke snake snow so soap soft soil soldier some son song soon sort sound soup south space speak special
speed spell spend spoon spring square stand star start station stay step stick still stone stop store storm
story straight strange street strong student study sugar summer sun supper sure surprise sweet swim table tail
take talk tall taste tea teach teacher team tell ten tent test than thank that the their them then there these
they thick thin thing think third this those though three through throw thumb ticket tiger time tiny tired to
today together tomorrow tongue tonight too tooth top touch tourist toward town toy track trade train tree trip
truck true try turn twelve twenty twin two uncle under until up upon us use usual valley value very village
visit voice wait walk wall want war warm wash watch water wave way we wear weather week weight well west wet
whale what wheel when where which while white who whole why wide wife wild will win wind window wing winter
wise wish with without woman wonder wood wool word work world worry write wrong yard year yellow yes yesterday
yet you young your zebra zero
""".split()
)
